"""Storing webhook alerts durably before the 2xx: one writer thread group-commits concurrent requests.

Each request hands its rows to the writer and waits for the commit; requests that arrive while a commit
is in progress share the next transaction, so SQLite's single writer is not one fsync per request.

Dedupe happens here, in the database: an alert is its (fingerprint, startsAt). A firing alert already
stored is a repeat (Alertmanager re-sends groups every group_interval/repeat_interval and retries). A
resolved notification updates a stored firing alert once; a resolved alert never seen firing is stored
as resolved, and a late firing for it is a repeat. Every new or changed row is marked pending for the
intake worker, which does the matching off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.dialects import postgresql

from runbot.adapters.alertmanager.payload import WebhookPayload
from runbot.store import tables
from runbot.store.db import Database
from runbot.store.raw import Raw
from runbot.store.types import utcnow

log = structlog.get_logger("runbot.intake")
ALERTS = tables.Alert.__table__  # type: ignore[attr-defined]
REJECTS = tables.WebhookReject.__table__  # type: ignore[attr-defined]
Key = tuple[str, str]  # (fingerprint, startsAt as stored)


@dataclass
class StoreResult:
    new: int = 0  # alerts stored for the first time, or resolutions recorded
    duplicates: int = 0  # repeats of what was already stored


@dataclass
class _Job:
    firing: list[dict[str, Any]]
    resolved: list[dict[str, Any]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[StoreResult]


# Alert ids only need to be unique (the primary key), not secret: 64 random bits from a generator seeded by the
# OS, re-seeded in forked children, cost ~0.1 us where os.urandom per id costs tens of us on some hosts.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def alert_id() -> str:
    return f"a{_ids.getrandbits(64):016x}"


def alert_rows(payload: WebhookPayload, now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for the alerts table, split into firing and resolved."""
    firing: list[dict[str, Any]] = []
    resolved: list[dict[str, Any]] = []
    group_labels = dict(payload.group_labels) or None
    for a in payload.alerts:
        row = {
            "id": alert_id(), "fingerprint": a.fingerprint, "starts_at": a.starts_at, "ends_at": a.ends_at,
            "status": a.status, "alertname": a.labels.get("alertname", ""), "labels": a.labels,
            "annotations": a.annotations, "generator_url": a.generator_url or None, "incident_id": None,
            "receiver": payload.receiver, "received_at": now, "updated_at": now, "matched": None,
            "group_key": payload.group_key, "group_labels": group_labels, "pending_since": now, "note": None,
        }  # fmt: skip
        (firing if a.status == "firing" else resolved).append(row)
    return firing, resolved


COLUMNS = ("id", "fingerprint", "starts_at", "ends_at", "status", "alertname", "labels", "annotations",
           "generator_url", "incident_id", "receiver", "received_at", "updated_at", "matched", "group_key",
           "group_labels", "pending_since", "note")  # fmt: skip
_SQLITE_CHUNK = 500  # rows per statement: 18 columns x 500 stays far below SQLite's 32766 variables
_ON_RESOLVED = ("DO UPDATE SET status = excluded.status, ends_at = excluded.ends_at, updated_at = excluded.updated_at, "
                "pending_since = coalesce(alerts.pending_since, excluded.pending_since) WHERE alerts.status = 'firing'")  # fmt: skip


def _sqlite_time(ts: datetime) -> str:
    # exactly what UTCDateTime + SQLAlchemy's SQLite DATETIME store, so both paths meet in the unique index
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


class _Formatter:
    """Times and JSON as SQLite stores them, memoized within a batch (rows share `now` and group labels)."""

    def __init__(self) -> None:
        self.times: dict[datetime, str] = {}
        self.docs: dict[int, str] = {}

    def time(self, ts: datetime | None) -> str | None:
        if ts is None:
            return None
        out = self.times.get(ts)
        if out is None:
            out = self.times[ts] = _sqlite_time(ts)
        return out

    def doc(self, d: dict[str, Any] | None) -> str | None:
        if d is None:
            return None
        key = id(d)
        out = self.docs.get(key)
        if out is None:
            out = self.docs[key] = json.dumps(d)
        return out

    def row(self, r: dict[str, Any]) -> tuple[Any, ...]:
        t, j = self.time, self.doc
        return (r["id"], r["fingerprint"], t(r["starts_at"]), t(r["ends_at"]), r["status"], r["alertname"],
                j(r["labels"]), j(r["annotations"]), r["generator_url"], r["incident_id"], r["receiver"],
                t(r["received_at"]), t(r["updated_at"]), r["matched"], r["group_key"], j(r["group_labels"]),
                t(r["pending_since"]), r["note"])  # fmt: skip


def _store_sqlite(conn: Connection | Raw, rows: list[dict[str, Any]], resolved: bool, fmt: _Formatter) -> set[Key]:
    """Multi-row INSERT ... ON CONFLICT ... RETURNING straight to the driver: SQLAlchemy's per-value
    bind processing costs more than the database work here, and this is the webhook's hot path."""
    changed: set[Key] = set()
    cols = ", ".join(COLUMNS)
    one = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    action = _ON_RESOLVED if resolved else "DO NOTHING"
    for i in range(0, len(rows), _SQLITE_CHUNK):
        chunk = rows[i:i + _SQLITE_CHUNK]
        values = ", ".join([one] * len(chunk))  # only constants and placeholders go into the text
        sql = f"INSERT INTO alerts ({cols}) VALUES {values} ON CONFLICT (fingerprint, starts_at) {action} RETURNING fingerprint, starts_at"  # noqa: S608
        params = tuple(v for r in chunk for v in fmt.row(r))
        cur = conn.cur.execute(sql, params) if isinstance(conn, Raw) else conn.exec_driver_sql(sql, params)
        changed.update((fp, st) for fp, st in cur)
    return changed


def _store_generic(conn: Connection | Raw, rows: list[dict[str, Any]], resolved: bool, fmt: _Formatter) -> set[Key]:
    if isinstance(conn, Raw) or conn.dialect.name != "postgresql":
        raise RuntimeError("the generic alert store needs a SQLAlchemy connection to PostgreSQL")
    ins = postgresql.insert(ALERTS)
    key_cols = [ALERTS.c.fingerprint, ALERTS.c.starts_at]
    if not resolved:
        stmt = ins.on_conflict_do_nothing(index_elements=key_cols)
    else:
        stmt = ins.on_conflict_do_update(
            index_elements=key_cols,
            set_={"status": ins.excluded.status, "ends_at": ins.excluded.ends_at, "updated_at": ins.excluded.updated_at,
                  "pending_since": func.coalesce(ALERTS.c.pending_since, ins.excluded.pending_since)},
            where=ALERTS.c.status == "firing",
        )  # fmt: skip
    returned = conn.execute(stmt.returning(ALERTS.c.fingerprint, ALERTS.c.starts_at), rows)
    return {(fp, fmt.time(st) or "") for fp, st in returned}


def store(conn: Connection | Raw, jobs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> list[StoreResult]:
    """Insert or update the alerts of several webhook requests in the caller's transaction."""
    firing: dict[Key, tuple[dict[str, Any], int]] = {}
    resolved: dict[Key, tuple[dict[str, Any], int]] = {}
    results = [StoreResult() for _ in jobs]
    fmt = _Formatter()
    for i, (f_rows, r_rows) in enumerate(jobs):
        for target, rows in ((firing, f_rows), (resolved, r_rows)):
            for r in rows:
                k = (r["fingerprint"], fmt.time(r["starts_at"]) or "")
                if k in target:
                    results[i].duplicates += 1
                else:
                    target[k] = (r, i)
    sqlite = conn.sqlite if isinstance(conn, Raw) else conn.dialect.name == "sqlite"
    write = _store_sqlite if sqlite else _store_generic
    for target in (firing, resolved):  # firing first: a resolution in the same batch then finds its row
        if not target:
            continue
        changed = write(conn, [r for r, _ in target.values()], target is resolved, fmt)
        for k, (_, i) in target.items():
            if k in changed:
                results[i].new += 1
            else:
                results[i].duplicates += 1
    return results


class WriteGate:
    """Orders this process's intake write transactions, webhook first.

    Without it the webhook writer and the intake worker meet in SQLite's busy handler, which sleeps in
    growing steps (up to 100 ms) instead of waking when the lock frees; and a worker catching up on a
    backlog would keep delaying acknowledgements. With it the worker only starts a transaction while no
    webhook commit is waiting (the backlog is durable, acknowledgements are what a sender times out on).
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
            with self._cond:
                self._held = False
                self._cond.notify_all()


class AlertWriter:
    """The single writer thread behind the webhook (group commit)."""

    def __init__(self, db: Database, *, on_commit: Callable[[], None] | None = None, max_rows: int = 5000,
                 gate: WriteGate | None = None) -> None:  # fmt: skip
        self.db = db
        self.gate = gate or WriteGate()
        self.last_commit = 0.0  # monotonic time of the last webhook commit (the worker backs off while recent)
        self.on_commit = on_commit
        self.max_rows = max_rows
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._main, name="runbot-intake-writer", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(None)
            thread.join(timeout)

    async def submit(self, firing: list[dict[str, Any]], resolved: list[dict[str, Any]]) -> StoreResult:
        """Wait until these rows are committed (raises if the transaction failed)."""
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        job = _Job(firing, resolved, loop, loop.create_future())
        self._q.put(job)
        return await job.future

    def _main(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            jobs, rows, stop = [job], len(job.firing) + len(job.resolved), False
            while rows < self.max_rows:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                rows += len(nxt.firing) + len(nxt.resolved)
            self._write(jobs)
            if stop:
                return

    def _transaction(self) -> contextlib.AbstractContextManager[Connection | Raw]:
        # SQLite: this thread's own DBAPI connection, no pool or SQLAlchemy transaction per commit
        return self.db.raw_tx() if self.db.is_sqlite else self.db.tx()

    def _write(self, jobs: list[_Job]) -> None:
        try:
            with self.gate.urgent(), self._transaction() as conn:
                results: list[StoreResult | BaseException] = list(store(conn, [(j.firing, j.resolved) for j in jobs]))
        except Exception as exc:
            log.error("could not store webhook alerts; the sender gets 503 and retries", error=repr(exc))
            results = [exc] * len(jobs)
        else:
            self.commits += 1
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[StoreResult], Any]]] = {}
        for j, r in zip(jobs, results, strict=True):
            by_loop.setdefault(j.loop, []).append((j.future, r))
        for loop, outcomes in by_loop.items():  # one wake-up per loop, not one per request
            with contextlib.suppress(RuntimeError):  # that loop is gone (shutdown): nobody waits any more
                loop.call_soon_threadsafe(_resolve, outcomes)
        self.last_commit = time.monotonic()
        if self.on_commit is not None and any(isinstance(r, StoreResult) and r.new for r in results):
            self.on_commit()


def _resolve(outcomes: list[tuple[asyncio.Future[StoreResult], Any]]) -> None:
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
