"""A real `runbot serve` child process, as a replica: its own port and log, an environment built from scratch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.ports import free_port
from tests.support.process import ManagedProcess

RUNBOT = str(Path(sys.executable).with_name("runbot"))


def clean_env(**runbot: str) -> dict[str, str]:
    """This process's environment without any RUNBOT_* variable, plus the given ones (RUNBOT_ prefixed)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}, "RUNBOT_CONFIG": "none"}
    env.update({f"RUNBOT_{k.upper()}": v for k, v in runbot.items()})
    return env


class Replica(ManagedProcess):
    """`launch()` starts it without waiting (replicas start together); `wait_ready()` waits for /readyz 200."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, argv: list[str] | None = None) -> None:
        self.name = f"runbot replica {name}"
        self.port = free_port()
        self.env = {**env, "RUNBOT_PORT": str(self.port), "RUNBOT_INSTANCE_ID": name}
        self.argv = argv or [RUNBOT, "serve"]
        self.proc = None
        self._log = None
        self._log_path = log_dir / f"{name}.log"

    def launch(self) -> Replica:
        self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        return self

    def start(self) -> Replica:
        self.launch()
        self.wait_ready(60)
        return self

    def probe_ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")
