"""What every real server a test starts has in common: a logged child process, stopped for sure."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

from tests.support.ports import free_port


class ManagedProcess:
    """Subclasses set `proc`, `_log` and `_log_path` in start() (or let start_on_free_port do it); this gives
    them the start on a free port, the readiness wait, stop, log_tail and `with`."""

    name = "server"  # in error messages
    port: int
    proc: subprocess.Popen[bytes] | None
    _log: IO[bytes] | None
    _log_path: Path

    def start(self) -> Any:
        raise NotImplementedError

    def probe_ready(self) -> bool:
        """One readiness check (an OSError means: not yet)."""
        raise NotImplementedError

    def start_on_free_port(self, argv: Callable[[], list[str]], timeout: float) -> None:
        """Pick a free loopback port, run argv() (built for that port) and wait until ready; on a new port if
        another process grabbed ours between pick and bind."""
        last = ""
        for _ in range(3):
            self.port = free_port()
            args = argv()  # may write config files (and the work directory) first
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                self.wait_ready(timeout)
                return
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
                if "address already in use" not in last:
                    break
        raise RuntimeError(last)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if self.probe_ready():
                    return
            except OSError:  # not listening yet (ssl.SSLError is one too)
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()  # type: ignore[union-attr]
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
