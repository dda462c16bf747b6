"""Slow templates render in a separate, low-priority process, so they cost the bot neither its GIL nor memory.

Almost every runbook template renders in microseconds, inline on the engine's event loop. One that runs out
of the inline budget (`INLINE_LIMITS`, 50 ms) is rendered again here. A worker *thread* would not do: a
CPU-bound render holds the GIL and, in a measured run, stretched webhook acknowledgements from ~25 ms to
~700 ms. A worker process has its own GIL, runs at a lower scheduling priority (nice 10) and under an
address-space limit, so a template bomb can neither slow the server down much nor exhaust its memory;
a worker that does not finish in time is killed and replaced.

The worker never sees a secret value: templates render `secret()` to MAC-protected placeholders, and the
worker gets the parent's placeholder key so the placeholders it makes are valid in the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import threading
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from runbot.runbooks.sandbox import TemplateBudgetExceeded, TemplateLimits, TemplateTimeout

WORKERS = 2
MEMORY_LIMIT_BYTES = 1024 * 1024 * 1024
NICENESS = 10


def _init_worker(placeholder_key: bytes, memory_limit: int) -> None:
    from runbot.runbooks import templating

    templating._PLACEHOLDER_KEY = placeholder_key
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICENESS)
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))


def _render_in_worker(value: Any, scope: Mapping[str, Any], limits: TemplateLimits) -> Any:
    from runbot.runbooks.templating import render

    return render(value, scope, limits)


class RenderPool:
    """A lazily started pool of render processes, shared by every engine loop of this process."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        from runbot.runbooks import templating

        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                    initargs=(templating._PLACEHOLDER_KEY, MEMORY_LIMIT_BYTES))  # fmt: skip
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        for proc in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                proc.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    async def render(self, value: Any, scope: Mapping[str, Any], limits: TemplateLimits) -> Any:
        try:
            pickle.dumps((value, scope))
        except Exception:  # not plain data (a test's scope, say): render in a thread instead
            from runbot.runbooks.templating import render

            return await asyncio.to_thread(render, value, scope, limits)
        executor = self._pool()
        future = executor.submit(_render_in_worker, value, scope, limits)
        # the worker stops itself at limits.seconds; this is the backstop (with room for a queue of slow renders)
        hard = limits.seconds * (self.workers + 2) + 5.0
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), hard)
        except TimeoutError:
            self._discard(executor)
            raise TemplateTimeout(f"the template did not finish within {hard:g} s and its renderer was stopped; "
                                  "simplify the template") from None  # fmt: skip
        except (BrokenProcessPool, MemoryError):
            self._discard(executor)
            raise TemplateBudgetExceeded("the template's renderer ran out of memory or crashed; simplify the template") from None

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


POOL = RenderPool()
