"""A minimal real Prometheus that evaluates alerting rules and sends to an Alertmanager.

support/prometheus.py (for the Prometheus step tests) scrapes only itself and has no `alerting` section
and no --rules.alert.resend-delay flag; intake tests need both, so this helper is separate and small:

    with AlertingPrometheus(workdir, rules=RULES, targets=["127.0.0.1:8000"], alertmanager="127.0.0.1:9093") as p:
        p.wait_for("ALERTS{alertstate='firing'}")
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.process import ManagedProcess
from tests.support.prometheus import PROMETHEUS_BIN, prometheus_available


class AlertingPrometheus(ManagedProcess):
    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        *,
        rules: str,
        targets: Sequence[str] = (),
        alertmanager: str | None = None,
        interval: str = "1s",
        resend_delay: str = "1s",
        binary: str = PROMETHEUS_BIN,
    ) -> None:
        self.workdir = Path(workdir)
        self.rules, self.targets, self.alertmanager = rules, list(targets), alertmanager
        self.interval, self.resend_delay, self.binary = interval, resend_delay, binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / "prometheus.log"
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AlertingPrometheus:
        if not prometheus_available():
            raise RuntimeError(f"Prometheus binary not found at {self.binary}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = self.workdir / "rules.yml"
        rules.write_text(self.rules)
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "targets", "static_configs": [{"targets": self.targets}]}] if self.targets else [],
        }
        if self.alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]}
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(json.dumps(config, indent=2))
        self.start_on_free_port(lambda: [
            self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", f"--rules.alert.resend-delay={self.resend_delay}",
            "--log.level=warn"], timeout)  # fmt: skip
        return self

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def probe_ready(self) -> bool:
        return self._get("/-/ready")[0] == 200

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if status != 200:
            raise RuntimeError(f"query {promql!r}: HTTP {status}")
        return list(json.loads(body)["data"]["result"])
