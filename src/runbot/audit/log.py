"""Append-only, hash-chained audit events.

Each event's hash is SHA-256 over its canonical JSON (which includes the previous event's hash), so an
edited row breaks its own hash and a deleted row breaks the link to the next one or the head record.
Appends run inside the caller's transaction: if the audit write fails, the action it records does not
commit either (fail closed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from runbot.observability import log_events
from runbot.store.raw import Raw
from runbot.store.tables import Approval, AuditEvent, AuditHead, Run
from runbot.store.types import utcnow

GENESIS = "0" * 64
EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
HEAD = AuditHead.__table__  # type: ignore[attr-defined]
_RUNS = Run.__table__  # type: ignore[attr-defined]
_APPROVALS = Approval.__table__  # type: ignore[attr-defined]
CONTENT_FIELDS = (
    "seq", "ts", "actor", "action", "run_id", "step_id", "incident_id",
    "runbook", "runbook_version", "outcome", "details", "prev_hash",
)  # fmt: skip


@dataclass
class Event:
    action: str
    actor: str = "system"
    run_id: str | None = None
    step_id: str | None = None
    incident_id: str | None = None
    runbook: str | None = None
    runbook_version: str | None = None
    outcome: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    ts: datetime | None = None


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: record.get(k) for k in CONTENT_FIELDS}
    ts = body["ts"]
    if isinstance(ts, datetime):
        body["ts"] = _iso(ts)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def event_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def lock_clause(raw: Raw) -> str:
    return "" if raw.sqlite else " FOR UPDATE"


HEAD_SQL = "SELECT seq, hash FROM audit_head WHERE id = 1"


def chain_rows(events: list[Event], seq: int, prev: str) -> list[dict[str, Any]]:
    """The events as audit rows chained onto the head (seq, hash)."""
    rows = []
    now = utcnow()
    for ev in events:
        seq += 1
        row = {
            "seq": seq,
            "ts": ev.ts or now,
            "actor": ev.actor,
            "action": ev.action,
            "run_id": ev.run_id,
            "step_id": ev.step_id,
            "incident_id": ev.incident_id,
            "runbook": ev.runbook,
            "runbook_version": ev.runbook_version,
            "outcome": ev.outcome,
            "details": json.loads(json.dumps(ev.details, default=str)) if ev.details else {},
            "prev_hash": prev,
        }
        row["hash"] = prev = event_hash(row)
        rows.append(row)
    return rows


def append(conn: Connection | Raw, events: Iterable[Event]) -> list[dict[str, Any]]:
    """Append events in order inside the caller's transaction and move the head (locked while we hold it)."""
    events = list(events)
    if not events:
        return []
    raw = Raw(conn)
    head = raw.audit_head or raw.execute(HEAD_SQL + lock_clause(raw), {}).fetchone()
    if head is None:
        raw.insert("audit_head", {"id": 1, "seq": 0, "hash": GENESIS})
        seq, prev = 0, GENESIS
    else:
        seq, prev = int(head[0]), str(head[1])
    rows = chain_rows(events, seq, prev)
    seq, prev = rows[-1]["seq"], rows[-1]["hash"]
    log_events(events)  # one INFO line each (runbot.observability)
    if raw.sqlite:
        raw.insert_many("audit_events", rows)
        raw.update("audit_head", {"seq": seq, "hash": prev}, "id = 1", {})
    else:  # one statement (a data-modifying CTE): one less round of parse/execute per commit
        cols = list(rows[0])
        values = ", ".join("(" + ", ".join(f":r{i}_{c}" for c in cols) + ")" for i in range(len(rows)))
        params = {f"r{i}_{c}": r[c] for i, r in enumerate(rows) for c in cols}
        raw.execute(f"WITH h AS (UPDATE audit_head SET seq = :head_seq, hash = :head_hash WHERE id = 1) "
                    f"INSERT INTO audit_events ({', '.join(cols)}) VALUES {values}",
                    {**params, "head_seq": seq, "head_hash": prev})  # fmt: skip
    return rows


@dataclass
class VerifyResult:
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    problem: str | None = None
    broken_seq: int | None = None
    anchor_seq: int | None = None  # events up to here were deleted by retention (confirmed by its audit event)


RETENTION_ACTION = "audit.retention"


def _confirms(rec: dict[str, Any], anchor: tuple[int, str]) -> bool:
    d = rec.get("details") or {}
    return rec.get("action") == RETENTION_ACTION and (d.get("deleted_through_seq"), d.get("deleted_through_hash")) == anchor


def verify_records(records: Iterator[dict[str, Any]], head: tuple[int, str] | None) -> VerifyResult:
    """Walk the chain in order; name the first event that does not fit. `head` is (seq, hash) if anchored.

    A chain may start after seq 1 only if retention removed the prefix: the first event's prev_hash is then
    the anchor, and a later `audit.retention` event must record that same (seq, hash) as deleted-through.
    """
    expected_prev, expected_seq, count = GENESIS, None, 0
    last_seq, last_hash = 0, GENESIS
    anchor: tuple[int, str] | None = None
    confirmed = False
    for rec in records:
        seq = int(rec["seq"])
        if expected_seq is None and seq > 1:
            anchor = (seq - 1, str(rec["prev_hash"]))
            expected_prev, last_seq, last_hash = anchor[1], anchor[0], anchor[1]
        if expected_seq is not None and seq != expected_seq:
            return VerifyResult(False, count, last_seq, last_hash,
                                f"event {expected_seq} is missing (deleted?): the chain jumps from {last_seq} to {seq}",
                                expected_seq)  # fmt: skip
        if rec["prev_hash"] != expected_prev:
            return VerifyResult(False, count, last_seq, last_hash,
                                f"event {seq} does not link to event {last_seq}: prev_hash differs", seq)
        actual = event_hash(rec)
        if actual != rec["hash"]:
            return VerifyResult(False, count, last_seq, last_hash,
                                f"event {seq} ({rec.get('action')}) was modified: its content no longer matches its hash",
                                seq)  # fmt: skip
        expected_prev = last_hash = rec["hash"]
        last_seq = seq
        expected_seq = seq + 1
        count += 1
        confirmed = confirmed or (anchor is not None and _confirms(rec, anchor))
    if anchor is not None and not confirmed:
        return VerifyResult(False, count, last_seq, last_hash,
                            f"events 1..{anchor[0]} are missing and no {RETENTION_ACTION} event records their deletion",
                            1)  # fmt: skip
    if head is not None:
        head_seq, head_hash = head
        if head_seq != last_seq or head_hash != last_hash:
            return VerifyResult(False, count, last_seq, last_hash,
                                f"the chain ends at event {last_seq} but the head records event {head_seq}: "
                                "events were removed from the end", last_seq + 1)  # fmt: skip
    return VerifyResult(True, count, last_seq, last_hash, anchor_seq=anchor[0] if anchor else None)


def iter_db_records(conn: Connection, batch: int = 5000) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        rows = conn.execute(select(EVENTS).where(EVENTS.c.seq > last).order_by(EVENTS.c.seq).limit(batch)).mappings().all()
        if not rows:
            return
        for r in rows:
            yield dict(r)
        last = rows[-1]["seq"]


def missing_history(conn: Connection, result: VerifyResult) -> str | None:
    """What the chain lacks that the other tables prove was recorded, or None.

    A run and an approval request are audited in the transaction that creates them, so the newest run and the
    newest approval must each have their event in the chain. An intact chain that is empty, or that ends before
    them, was wiped or cut from the end together with its head: that verifies on its own (an unkeyed chain can
    be rebuilt), so it is caught here. Retention may have deleted the events of rows older than the chain's
    first remaining event; those are not asked for.
    """
    runs = conn.execute(select(func.count()).select_from(_RUNS)).scalar_one()
    approvals = conn.execute(select(func.count()).select_from(_APPROVALS)).scalar_one()
    if result.count == 0:
        if runs or approvals:
            return (f"the chain is empty but the database holds {runs} run(s) and {approvals} approval(s): "
                    "the audit trail was wiped")  # fmt: skip
        return None
    since = None
    if result.anchor_seq is not None:  # retention removed a prefix: rows older than what is left may lack events
        since = conn.execute(select(EVENTS.c.ts).where(EVENTS.c.seq > result.anchor_seq).order_by(EVENTS.c.seq).limit(1)).scalar()
    newest = conn.execute(select(_RUNS.c.id, _RUNS.c.created_at).order_by(_RUNS.c.created_at.desc()).limit(1)).first()
    if newest is not None and (since is None or newest.created_at >= since):
        q = select(EVENTS.c.seq).where(EVENTS.c.run_id == newest.id, EVENTS.c.action == "run.created").limit(1)
        if conn.execute(q).first() is None:
            return (f"run {newest.id} has no run.created event: the chain ends at event {result.head_seq}, "
                    "before that run was created (cut from the end, head and all)")  # fmt: skip
    appr = conn.execute(select(_APPROVALS.c.id, _APPROVALS.c.run_id, _APPROVALS.c.step_id, _APPROVALS.c.requested_at)
                        .order_by(_APPROVALS.c.requested_at.desc()).limit(1)).first()  # fmt: skip
    if appr is not None and (since is None or appr.requested_at >= since):
        q = select(EVENTS.c.seq).where(EVENTS.c.run_id == appr.run_id, EVENTS.c.action == "approval.requested",
                                       EVENTS.c.step_id == appr.step_id).limit(1)  # fmt: skip
        if conn.execute(q).first() is None:
            return (f"approval {appr.id} has no approval.requested event: the chain ends at event "
                    f"{result.head_seq}, before it was requested (cut from the end, head and all)")  # fmt: skip
    return None


def verify_db(conn: Connection) -> VerifyResult:
    """The chain as stored, and whether it still holds what the runs and approvals tables prove was audited."""
    head_row = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1)).first()
    head = (head_row.seq, head_row.hash) if head_row else (0, GENESIS)
    result = verify_records(iter_db_records(conn), head)
    if result.ok:
        problem = missing_history(conn, result)
        if problem is not None:
            return VerifyResult(False, result.count, result.head_seq, result.head_hash, problem, result.head_seq + 1,
                                result.anchor_seq)  # fmt: skip
    return result
