"""The lifecycle every background thread of runbot shares: start once, wake on demand, stop and join."""

from __future__ import annotations

import threading


class WorkerThread:
    """Subclasses implement `_run`, looping until `self._stop` is set and sleeping on `self._wake`."""

    thread_name = "runbot-worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake.set()  # first pass at once: work left by a previous process is picked up on start
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Thread-safe: there is new work."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError
