"""Storing accepted webhook bodies durably before the 2xx: one writer thread group-commits concurrent requests.

Each request hands its validated body to the writer and waits for the commit; requests that arrive while a
commit is in progress share the next transaction, so SQLite's single writer is not one fsync per request.
A notification is stored as one `webhook_deliveries` row whatever its size: splitting it into alerts,
dedupe and matching happen in the intake worker after the answer (see unpack.py), so a 50-alert
notification costs the request path one row, not 50 indexed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, delete, func, insert, select

from runbot.store import tables
from runbot.store.db import Database
from runbot.store.raw import Raw
from runbot.store.types import utcnow

log = structlog.get_logger("runbot.intake")
DELIVERIES = tables.WebhookDelivery.__table__  # type: ignore[attr-defined]
REJECTS = tables.WebhookReject.__table__  # type: ignore[attr-defined]
PROGRESS = tables.WebhookDeliveryProgress.__table__  # type: ignore[attr-defined]
_SQLITE_CHUNK = 500  # rows per statement (4 variables each)


@dataclass
class _Job:
    receiver: str | None
    alerts: int
    body: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]  # the delivery id


def store_deliveries(conn: Connection | Raw, jobs: list[tuple[str | None, int, bytes]], now: datetime) -> list[int]:
    """Insert one delivery row per (receiver, alerts, body) in the caller's transaction; their ids, in order."""
    if isinstance(conn, Raw):  # SQLite's hot path, straight to the driver
        at = conn.adapt(now)
        ids: list[int] = []
        for i in range(0, len(jobs), _SQLITE_CHUNK):
            chunk = jobs[i:i + _SQLITE_CHUNK]
            sql = ("INSERT INTO webhook_deliveries (received_at, receiver, alerts, body) VALUES "  # noqa: S608
                   + ", ".join(["(?, ?, ?, ?)"] * len(chunk)) + " RETURNING id")  # only placeholders in the text
            cur = conn.cur.execute(sql, tuple(v for r, n, b in chunk for v in (at, r, n, b)))
            # SQLite gives one statement's new rowids in ascending VALUES order; RETURNING's own order is unspecified
            ids += sorted(row[0] for row in cur)
        return ids
    rows = [{"received_at": now, "receiver": r, "alerts": n, "body": b} for r, n, b in jobs]
    res = conn.execute(insert(DELIVERIES).returning(DELIVERIES.c.id, sort_by_parameter_order=True), rows)
    return [row[0] for row in res]


def pending_alerts(conn: Connection) -> int:
    """Alerts accepted but not yet unpacked (the backlog)."""
    return int(conn.execute(pending_alerts_query()).scalar() or 0)


def pending_alerts_query() -> Any:
    """SELECT of the backlog: alerts of deliveries not done, less the slices of big ones already unpacked."""
    d, p = DELIVERIES.c, PROGRESS.c
    left = func.coalesce(func.sum(d.alerts - func.coalesce(p.unpacked, 0)), 0)
    return select(left).select_from(DELIVERIES.outerjoin(PROGRESS, p.delivery_id == d.id)).where(d.processed_at.is_(None))


class Backlog:
    """This process's view of accepted-but-unpacked alerts: read on every request, so no query there.

    Its own commits add and its own intake worker takes away; where another replica unpacks (or this one
    does not), it only grows, so a request that finds it full re-reads the real figure (at most once a second).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.alerts = 0
        self.checked = 0.0  # monotonic time of the last re-read

    def add(self, n: int) -> None:
        with self._lock:
            self.alerts += n

    def take(self, n: int) -> None:
        with self._lock:
            self.alerts = max(0, self.alerts - n)

    def reset(self, n: int) -> None:
        with self._lock:
            self.alerts = n


class WriteGate:
    """Orders this process's intake write transactions, webhook first.

    Without it the webhook writer and the intake worker meet in SQLite's busy handler, which sleeps in
    growing steps (up to 100 ms) instead of waking when the lock frees; and a worker catching up on a
    backlog would keep delaying acknowledgements. With it the worker only starts a transaction while no
    webhook commit is waiting (the backlog is durable, acknowledgements are what a sender times out on), and
    holds it for one bounded batch (a slice of a big notification), so an acknowledgement waits at most that long.
    On PostgreSQL the webhook writer does not take it at all.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._urgent = 0

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        with self._cond:
            self._urgent += 1
            while self._held:
                self._cond.wait()
            self._urgent -= 1
            self._held = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def urgent_waiting(self) -> bool:
        """A webhook commit is waiting for the gate (the worker should wrap up its batch)."""
        return self._urgent > 0

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        with self._cond:
            while self._held or self._urgent:
                self._cond.wait()
            self._held = True
        try:
            yield
        finally:
            self._release()


class DeliveryWriter:
    """The single writer thread behind the webhook (group commit)."""

    def __init__(self, db: Database, *, on_commit: Callable[[], None] | None = None, max_jobs: int = 1000,
                 max_bytes: int = 32 << 20, gate: WriteGate | None = None) -> None:  # fmt: skip
        self.db = db
        self.gate = gate or WriteGate()
        self.backlog = Backlog()
        self.last_commit = 0.0  # monotonic time of the last webhook commit (the worker backs off while recent)
        self.on_commit = on_commit
        self.max_jobs, self.max_bytes = max_jobs, max_bytes
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # a database that is down now is reported by the first write
                with contextlib.suppress(Exception), self.db.read() as conn:
                    self.backlog.reset(pending_alerts(conn))
                self._thread = threading.Thread(target=self._main, name="runbot-intake-writer", daemon=True)
                self._thread.start()

    def recount(self, every: float = 1.0) -> int:
        """The backlog as the database has it (blocking: call off the event loop); cached for `every` seconds."""
        now = time.monotonic()
        if now - self.backlog.checked >= every:
            self.backlog.checked = now
            with self.db.read() as conn:
                self.backlog.reset(pending_alerts(conn))
        return self.backlog.alerts

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(None)
            thread.join(timeout)

    async def submit(self, receiver: str | None, alerts: int, body: bytes) -> int:
        """Wait until this body is committed; its delivery id (raises if the transaction failed)."""
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        job = _Job(receiver, alerts, body, loop, loop.create_future())
        self._q.put(job)
        return await job.future

    def _main(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            jobs, size, stop = [job], len(job.body), False
            while len(jobs) < self.max_jobs and size < self.max_bytes:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                size += len(nxt.body)
            self._write(jobs)
            if stop:
                return

    def _transaction(self) -> contextlib.AbstractContextManager[Connection | Raw]:
        # SQLite: this thread's own DBAPI connection, no pool or SQLAlchemy transaction per commit. PostgreSQL:
        # a pooled connection, committing synchronously (raw_tx's connection commits asynchronously there).
        return self.db.raw_tx() if self.db.is_sqlite else self.db.tx()

    def _gate(self) -> contextlib.AbstractContextManager[None]:
        # SQLite has one writer: take turns with the intake worker (webhook first). PostgreSQL has no such lock:
        # a delivery insert conflicts with nothing the worker holds, so an acknowledgement never waits for a batch.
        return self.gate.urgent() if self.db.is_sqlite else contextlib.nullcontext()

    def _write(self, jobs: list[_Job]) -> None:
        try:
            with self._gate(), self._transaction() as conn:
                results: list[int | BaseException] = list(
                    store_deliveries(conn, [(j.receiver, j.alerts, j.body) for j in jobs], utcnow()))
        except Exception as exc:
            log.error("could not store webhook deliveries; the sender gets 503 and retries", error=repr(exc))
            results = [exc] * len(jobs)
        else:
            self.commits += 1
            self.backlog.add(sum(j.alerts for j in jobs))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], Any]]] = {}
        for j, r in zip(jobs, results, strict=True):
            by_loop.setdefault(j.loop, []).append((j.future, r))
        for loop, outcomes in by_loop.items():  # one wake-up per loop, not one per request
            with contextlib.suppress(RuntimeError):  # that loop is gone (shutdown): nobody waits any more
                loop.call_soon_threadsafe(_resolve, outcomes)
        self.last_commit = time.monotonic()
        if self.on_commit is not None and not isinstance(results[0], BaseException):
            self.on_commit()


def _resolve(outcomes: list[tuple[asyncio.Future[int], Any]]) -> None:
    for fut, r in outcomes:
        if fut.done():  # the request went away meanwhile
            continue
        if isinstance(r, BaseException):
            fut.set_exception(r)
        else:
            fut.set_result(r)


def store_reject(db: Database, *, receiver: str | None, status_code: int, error: str, body: bytes, body_size: int,
                 keep_bytes: int, keep_rows: int) -> None:  # fmt: skip
    """Keep a refused body (size-capped) for inspection; prune the oldest beyond `keep_rows`."""
    if keep_rows <= 0:
        return
    with db.tx() as conn:
        res = conn.execute(insert(REJECTS).values(
            received_at=utcnow(), receiver=receiver, status_code=status_code, error=error[:2000],
            body_size=body_size, body=body[:keep_bytes], truncated=body_size > min(len(body), keep_bytes)))  # fmt: skip
        new_id_ = res.inserted_primary_key[0] if res.inserted_primary_key else None
        if new_id_ is not None and new_id_ > keep_rows:
            oldest_kept = conn.execute(select(REJECTS.c.id).order_by(REJECTS.c.id.desc())
                                       .offset(keep_rows - 1).limit(1)).scalar()  # fmt: skip
            if oldest_kept is not None:
                conn.execute(delete(REJECTS).where(REJECTS.c.id < oldest_kept))
