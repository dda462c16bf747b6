"""`runbot serve` as a real subprocess on a free port (so tests can SIGKILL it, SIGHUP it, restart it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port

from .conftest import API_TOKEN, HOOK_TOKEN


def runbot_command() -> list[str]:
    """The installed `runbot` entry point (as users run it), else the module."""
    script = Path(sys.executable).parent / "runbot"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runbot.cli.main"]


class RunbotServer:
    def __init__(self, workdir: Path, runbooks_dir: Path, **env: Any) -> None:
        self.workdir = Path(workdir)
        self.runbooks_dir = runbooks_dir
        self.extra_env = {k.upper(): str(v) for k, v in env.items()}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "runbot.log"
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{(self.workdir / 'data' / 'runbot.db').resolve()}"

    def env(self) -> dict[str, str]:
        base = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}, "RUNBOT_CONFIG": "none"}
        base.update({
            "RUNBOT_DATA_DIR": str(self.workdir / "data"), "RUNBOT_RUNBOOKS_DIR": str(self.runbooks_dir),
            "RUNBOT_HOST": "127.0.0.1", "RUNBOT_PORT": str(self.port), "RUNBOT_POLL_INTERVAL": "0.2",
            "RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN": HOOK_TOKEN, "RUNBOT_API_TOKEN": API_TOKEN,
            "RUNBOT_LOG_LEVEL": "WARNING",
        })  # fmt: skip
        base.update({k if k.startswith("RUNBOT_") else f"RUNBOT_{k}": v for k, v in self.extra_env.items()})
        return base

    def start(self, timeout: float = 30.0) -> RunbotServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*runbot_command(), "serve"], env=self.env(),
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runbot exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"runbot not ready after {timeout}s:\n{self.log_tail()}")

    def post(self, body: Any, client: httpx.Client | None = None) -> httpx.Response:
        c = client or httpx
        return c.post(self.url + "/webhooks/alertmanager", json=body,
                      headers={"Authorization": f"Bearer {HOOK_TOKEN}"}, timeout=10.0)  # type: ignore[attr-defined]

    def api(self, path: str, method: str = "GET") -> Any:
        r = httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10.0)
        r.raise_for_status()
        return r.json()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing, like a crashed host."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
        self._close_log()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> RunbotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
