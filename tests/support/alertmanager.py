"""A real Alertmanager for tests: /usr/bin/prometheus-alertmanager on a free 127.0.0.1 port, temp config.

    with AlertmanagerProcess(tmp_path / "am", webhook_url=url, bearer_token="t", group_interval="1s") as am:
        am.post_alerts([{"labels": {"alertname": "X"}}])       # as Prometheus would (API v2)
        sid = am.create_silence({"alertname": "X"}, minutes=10)
        am.expire_silence(sid)

Clustering is off (no gossip port), data lives in the work directory, and `stop()` always ends the process.
Like the other support helpers it imports no runbot code: it is the other side of the wire.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.process import ManagedProcess

ALERTMANAGER_BIN = os.environ.get("ALERTMANAGER_BIN", "/usr/bin/prometheus-alertmanager")


def alertmanager_available() -> bool:
    return Path(ALERTMANAGER_BIN).is_file() and os.access(ALERTMANAGER_BIN, os.X_OK)


class AlertmanagerProcess(ManagedProcess):
    name = "alertmanager"

    def __init__(
        self,
        workdir: Path,
        *,
        webhook_url: str | None = None,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        receiver: str = "runbot",
        group_by: tuple[str, ...] = ("alertname",),
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "2s",
        send_resolved: bool = True,
        binary: str = ALERTMANAGER_BIN,
    ) -> None:
        self.workdir = Path(workdir)
        self.webhook_url = webhook_url
        self.bearer_token = bearer_token
        self.basic_auth = basic_auth
        self.receiver = receiver
        self.group_by = list(group_by)
        self.group_wait, self.group_interval, self.repeat_interval = group_wait, group_interval, repeat_interval
        self.send_resolved = send_resolved
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / "alertmanager.log"
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        receiver: dict[str, Any] = {"name": self.receiver}
        if self.webhook_url:
            hook: dict[str, Any] = {"url": self.webhook_url, "send_resolved": self.send_resolved, "max_alerts": 0}
            http: dict[str, Any] = {}
            if self.bearer_token:
                http["authorization"] = {"type": "Bearer", "credentials": self.bearer_token}
            if self.basic_auth:
                http["basic_auth"] = {"username": self.basic_auth[0], "password": self.basic_auth[1]}
            if http:
                hook["http_config"] = http
            receiver["webhook_configs"] = [hook]
        return {
            "route": {"receiver": self.receiver, "group_by": self.group_by, "group_wait": self.group_wait,
                      "group_interval": self.group_interval, "repeat_interval": self.repeat_interval},
            "receivers": [receiver],
        }  # fmt: skip

    def start(self, timeout: float = 20.0) -> AlertmanagerProcess:
        if not alertmanager_available():
            raise RuntimeError(f"Alertmanager not found at {self.binary} (apt-get install prometheus-alertmanager)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"

        def argv() -> list[str]:
            config.write_text(json.dumps(self._config(), indent=2))  # JSON is YAML
            return [self.binary, f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"]

        self.start_on_free_port(argv, timeout)
        return self

    def restart(self, timeout: float = 20.0) -> AlertmanagerProcess:
        """Start again on the same port and work directory (after `stop()`): the same URL, its silences kept."""
        config = self.workdir / "alertmanager.yml"
        self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        self.wait_ready(timeout)
        return self

    def probe_ready(self) -> bool:
        return self.request("GET", "/-/ready")[0] == 200

    # ---- API -------------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        status, body = self.request("POST", "/api/v2/alerts", alerts)
        if status != 200:
            raise RuntimeError(f"POST /api/v2/alerts: HTTP {status}: {body}")

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/v2/alerts")[1] or [])

    def create_silence(self, labels: dict[str, str], *, minutes: float = 10, comment: str = "maintenance",
                       created_by: str = "test", matchers: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
        """A silence on these labels (equality), or on explicit API matchers {name, value, isRegex, isEqual}."""
        now = datetime.now(UTC)
        given = matchers if matchers is not None else [
            {"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in labels.items()]
        body = {"matchers": given,
                "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
                "createdBy": created_by, "comment": comment}  # fmt: skip
        status, resp = self.request("POST", "/api/v2/silences", body)
        if status != 200:
            raise RuntimeError(f"POST /api/v2/silences: HTTP {status}: {resp}")
        return str(resp["silenceID"])

    def expire_silence(self, silence_id: str) -> None:
        status, resp = self.request("DELETE", f"/api/v2/silence/{silence_id}")
        if status != 200:
            raise RuntimeError(f"DELETE silence: HTTP {status}: {resp}")
