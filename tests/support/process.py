"""What every real server a test starts has in common: a logged child process, stopped for sure."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO, Any, Self


class ManagedProcess:
    """Subclasses set `proc`, `_log` and `_log_path` in start(); this gives them stop, log_tail and `with`."""

    proc: subprocess.Popen[bytes] | None
    _log: IO[bytes] | None
    _log_path: Path

    def start(self) -> Any:
        raise NotImplementedError

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
