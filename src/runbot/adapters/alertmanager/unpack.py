"""Unpacking accepted webhook deliveries into alert rows, deduplicated, in the intake worker's transaction.

The webhook commits each notification as one `webhook_deliveries` row and answers; this is where its
alerts become rows. Dedupe happens here, in the database: an alert is its (receiver, fingerprint, startsAt),
so one receiver can neither repeat nor resolve another receiver's alert. A firing
alert already stored is a repeat (Alertmanager re-sends groups every group_interval/repeat_interval and
retries). A resolved notification updates a stored firing alert once; a resolved alert never seen firing
is stored as resolved, and a late firing for it is a repeat. Every new or changed row is marked pending
for matching.

A notification is unpacked in slices of at most `max_alerts` alerts per transaction (a legal 4 MiB body holds
some 36,000 alerts), so no transaction that other writers wait on grows with one sender's notification. The
delivery's progress row (`webhook_delivery_progress`) moves in the same transaction as its slice's alerts:
a crash resumes at the next slice, and every acknowledged alert is stored exactly once. A body is parsed once per process, outside
any transaction (`Unpacker.prepare`), and kept until its last slice is in.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql

from runbot.adapters.alertmanager.payload import PayloadError, WebhookPayload, parse
from runbot.store import tables
from runbot.store.raw import Raw

if TYPE_CHECKING:
    from runbot.store.db import Database

log = structlog.get_logger("runbot.intake")
ALERTS = tables.Alert.__table__  # type: ignore[attr-defined]
DELIVERIES = tables.WebhookDelivery.__table__  # type: ignore[attr-defined]
PROGRESS = tables.WebhookDeliveryProgress.__table__  # type: ignore[attr-defined]
Key = tuple[str, str, str]  # (receiver, fingerprint, startsAt as stored)


@dataclass
class StoreResult:
    new: int = 0  # alerts stored for the first time, or resolutions recorded
    duplicates: int = 0  # repeats of what was already stored


@dataclass
class Unpacked:
    deliveries: int = 0
    alerts: int = 0  # as declared by the deliveries (what leaves the backlog)
    new: int = 0
    duplicates: int = 0
    failed: int = 0
    last_id: int = 0
    partial: int = 0  # deliveries with alerts left for the next slice


# Alert ids only need to be unique (the primary key), not secret: 64 random bits from a generator seeded by the
# OS, re-seeded in forked children, cost ~0.1 us where os.urandom per id costs tens of us on some hosts.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def alert_id() -> str:
    return f"a{_ids.getrandbits(64):016x}"


def alert_rows(payload: WebhookPayload, received_at: datetime, now: datetime | None = None, start: int = 0,
               stop: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Rows for the alerts table (of alerts[start:stop]), split into firing and resolved (pending, in order)."""
    now = now or received_at
    firing: list[dict[str, Any]] = []
    resolved: list[dict[str, Any]] = []
    group_labels = dict(payload.group_labels) or None
    for a in payload.alerts[start:stop]:
        row = {
            "id": alert_id(), "fingerprint": a.fingerprint, "starts_at": a.starts_at, "ends_at": a.ends_at,
            "status": a.status, "alertname": a.labels.get("alertname", ""), "labels": a.labels,
            "annotations": a.annotations, "generator_url": a.generator_url or None, "incident_id": None,
            "receiver": payload.receiver, "received_at": received_at, "updated_at": now, "matched": None,
            "group_key": payload.group_key, "group_labels": group_labels, "pending_since": received_at, "note": None,
            "extras": a.extras,
        }  # fmt: skip
        (firing if a.status == "firing" else resolved).append(row)
    return firing, resolved


COLUMNS = ("id", "fingerprint", "starts_at", "ends_at", "status", "alertname", "labels", "annotations",
           "generator_url", "incident_id", "receiver", "received_at", "updated_at", "matched", "group_key",
           "group_labels", "pending_since", "note", "extras")  # fmt: skip
_SQLITE_CHUNK = 500  # rows per statement: 19 columns x 500 stays far below SQLite's 32766 variables
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
                t(r["pending_since"]), r["note"], j(r["extras"]))  # fmt: skip


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
        sql = (f"INSERT INTO alerts ({cols}) VALUES {values} ON CONFLICT (receiver, fingerprint, starts_at) "  # noqa: S608
               f"{action} RETURNING receiver, fingerprint, starts_at")
        params = tuple(v for r in chunk for v in fmt.row(r))
        cur = conn.cur.execute(sql, params) if isinstance(conn, Raw) else conn.exec_driver_sql(sql, params)
        changed.update((rc, fp, st) for rc, fp, st in cur)
    return changed


def _store_generic(conn: Connection | Raw, rows: list[dict[str, Any]], resolved: bool, fmt: _Formatter) -> set[Key]:
    if isinstance(conn, Raw) or conn.dialect.name != "postgresql":
        raise RuntimeError("the generic alert store needs a SQLAlchemy connection to PostgreSQL")
    ins = postgresql.insert(ALERTS)
    key_cols = [ALERTS.c.receiver, ALERTS.c.fingerprint, ALERTS.c.starts_at]
    if not resolved:
        stmt = ins.on_conflict_do_nothing(index_elements=key_cols)
    else:
        stmt = ins.on_conflict_do_update(
            index_elements=key_cols,
            set_={"status": ins.excluded.status, "ends_at": ins.excluded.ends_at, "updated_at": ins.excluded.updated_at,
                  "pending_since": func.coalesce(ALERTS.c.pending_since, ins.excluded.pending_since)},
            where=ALERTS.c.status == "firing",
        )  # fmt: skip
    returned = conn.execute(stmt.returning(ALERTS.c.receiver, ALERTS.c.fingerprint, ALERTS.c.starts_at), rows)
    return {(rc, fp, fmt.time(st) or "") for rc, fp, st in returned}


def store(conn: Connection | Raw, jobs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> list[StoreResult]:
    """Insert or update the alerts of several webhook requests in the caller's transaction."""
    firing: dict[Key, tuple[dict[str, Any], int]] = {}
    resolved: dict[Key, tuple[dict[str, Any], int]] = {}
    results = [StoreResult() for _ in jobs]
    fmt = _Formatter()
    for i, (f_rows, r_rows) in enumerate(jobs):
        for target, rows in ((firing, f_rows), (resolved, r_rows)):
            for r in rows:
                k = (r["receiver"], r["fingerprint"], fmt.time(r["starts_at"]) or "")
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


@dataclass
class _Parsed:
    """One delivery's body, parsed: kept while the delivery is unpacked slice by slice."""

    received_at: datetime
    payload: WebhookPayload | None
    error: str | None = None


@dataclass
class _Slice:
    delivery_id: int
    declared: int  # the delivery's alert count (as the webhook counted them)
    start: int  # alerts already unpacked
    take: int  # alerts in this slice
    new: int = 0  # what the earlier slices found
    duplicates: int = 0


@dataclass
class Unpacker:
    """Unpacks pending deliveries in bounded slices, parsing each body once (outside transactions, when prepared)."""

    parsed: dict[int, _Parsed] = field(default_factory=dict)

    @staticmethod
    def _plan(conn: Connection, max_alerts: int) -> list[_Slice]:
        """The next slices, oldest delivery first, at most `max_alerts` alerts in all: whole deliveries, or a
        slice of the oldest one when it alone is bigger."""
        d, p = DELIVERIES.c, PROGRESS.c
        budget = max(1, max_alerts)
        pending = (select(d.id, d.alerts, p.unpacked, p.new, p.duplicates)
                   .select_from(DELIVERIES.outerjoin(PROGRESS, p.delivery_id == d.id))
                   .where(d.processed_at.is_(None)).order_by(d.id).limit(budget))  # fmt: skip
        plan: list[_Slice] = []
        for delivery_id, n, done, new, dup in conn.execute(pending):
            left = max(0, n - (done or 0))
            if plan and left > budget:  # only the first delivery is ever cut: small ones are taken whole
                break
            take = min(left, budget)
            plan.append(_Slice(delivery_id, n, done or 0, take, new or 0, dup or 0))
            budget -= take
        return plan

    def prepare(self, db: Database, max_alerts: int) -> None:
        """Parse the bodies the next `unpack` will need, in a read transaction and outside it: a big body's
        parse (a few hundred ms for 36,000 alerts) then never runs while a write gate or lock is held."""
        with db.read() as conn:
            missing = [p.delivery_id for p in self._plan(conn, max_alerts) if p.delivery_id not in self.parsed]
            bodies = self._bodies(conn, missing) if missing else []
        for delivery_id, received_at, body in bodies:
            self.parsed[delivery_id] = _parse(delivery_id, received_at, body)

    @staticmethod
    def _bodies(conn: Connection, ids: list[int]) -> list[tuple[int, datetime, bytes]]:
        d = DELIVERIES.c
        rows = conn.execute(select(d.id, d.received_at, d.body).where(d.id.in_(ids)).order_by(d.id)).all()
        return [(i, at, bytes(b)) for i, at, b in rows]

    def unpack(self, conn: Connection, now: datetime, max_alerts: int) -> Unpacked:
        """Unpack the next slices of the oldest pending deliveries (about `max_alerts` alerts) in `conn`'s transaction."""
        out = Unpacked()
        plan = self._plan(conn, max_alerts)
        if not plan:
            self.parsed.clear()
            return out
        first = plan[0].delivery_id
        for stale in [i for i in self.parsed if i < first]:  # finished elsewhere (another replica, or a rollback)
            del self.parsed[stale]
        missing = [p.delivery_id for p in plan if p.delivery_id not in self.parsed]
        if missing:
            for delivery_id, received_at, body in self._bodies(conn, missing):
                self.parsed[delivery_id] = _parse(delivery_id, received_at, body)
        jobs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
        stored: list[_Slice] = []
        failed: list[dict[str, Any]] = []
        for p in plan:
            parsed = self.parsed[p.delivery_id]
            if parsed.payload is None:
                out.failed += 1
                out.alerts += p.declared - p.start
                failed.append({"id": p.delivery_id, "at": now, "err": (parsed.error or "")[:2000]})
                continue
            jobs.append(alert_rows(parsed.payload, parsed.received_at, now, p.start, p.start + p.take))
            stored.append(p)
            out.alerts += p.take
        partial: list[dict[str, Any]] = []
        done: list[dict[str, Any]] = []
        for p, result in zip(stored, store(conn, jobs), strict=True):
            out.new += result.new
            out.duplicates += result.duplicates
            payload = self.parsed[p.delivery_id].payload
            total = min(p.declared, len(payload.alerts)) if payload is not None else p.declared
            row = {"id": p.delivery_id, "at": now, "u": p.start + p.take, "new": p.new + result.new,
                   "dup": p.duplicates + result.duplicates}  # fmt: skip
            if p.start + p.take >= total:
                done.append(row)
            else:
                partial.append(row)
        raw = Raw(conn)
        if partial:  # the delivery row (with its body) is not touched until its last slice
            raw.executemany("INSERT INTO webhook_delivery_progress (delivery_id, unpacked, new, duplicates) "
                            "VALUES (:id, :u, :new, :dup) ON CONFLICT (delivery_id) DO UPDATE SET "
                            "unpacked = excluded.unpacked, new = excluded.new, duplicates = excluded.duplicates",
                            partial)  # fmt: skip
        if done:  # the alerts are the record now; the outcome stays
            raw.executemany("UPDATE webhook_deliveries SET new = :new, duplicates = :dup, processed_at = :at, "
                            "error = NULL, body = :body WHERE id = :id", [{**r, "body": b""} for r in done])  # fmt: skip
        if failed:  # accepted once, refused now: kept (with its body) for inspection
            raw.executemany("UPDATE webhook_deliveries SET processed_at = :at, new = 0, duplicates = 0, error = :err "
                            "WHERE id = :id", failed)  # fmt: skip
        if any(p.start for p in plan):
            ended = [{"id": r["id"]} for r in done + failed]
            if ended:
                raw.executemany("DELETE FROM webhook_delivery_progress WHERE delivery_id = :id", ended)
        for r in done:
            self.parsed.pop(r["id"], None)
        for r in failed:
            self.parsed.pop(r["id"], None)
        out.deliveries = len(done) + len(failed)
        out.partial = len(partial)
        out.last_id = max(p.delivery_id for p in plan)
        return out


def _parse(delivery_id: int, received_at: datetime, body: bytes) -> _Parsed:
    try:
        return _Parsed(received_at, parse(body))
    except PayloadError as exc:  # accepted once, refused now (e.g. validation changed across an upgrade)
        log.error("an accepted webhook delivery can no longer be read; kept for inspection",
                  delivery=delivery_id, error=exc.message)  # fmt: skip
        return _Parsed(received_at, None, exc.message)


def unpack(conn: Connection, now: datetime, max_alerts: int) -> Unpacked:
    """Unpack the next slices of pending deliveries (about `max_alerts` alerts) without a kept parse cache."""
    return Unpacker().unpack(conn, now, max_alerts)


def prune_deliveries(conn: Connection, below_id: int) -> int:
    """Forget processed deliveries with ids up to `below_id` (their alerts stay)."""
    res = Raw(conn).execute("DELETE FROM webhook_deliveries WHERE id <= :cut AND processed_at IS NOT NULL",
                            {"cut": below_id})  # fmt: skip
    return int(res.rowcount or 0)
