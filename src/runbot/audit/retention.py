"""Retention: delete old finished runs and raw alerts; audit events only when explicitly configured.

Every deletion is itself an audited event written in the same transaction (if the audit write fails,
nothing is deleted). Deleting audit events removes a prefix of the chain and appends an `audit.retention`
event recording the last deleted event's seq and hash: the first remaining event links to exactly that
hash, so verification starts from this recorded anchor instead of from genesis, and a prefix removed
without such an event still fails verification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, and_, delete, func, or_, select

from runbot.audit import log as audit
from runbot.audit.records import ExportFilter, chain_head, iso, iter_batches
from runbot.domain import TERMINAL_RUN
from runbot.engine.state import APPROVALS, INCIDENTS, RUNS, VOTES
from runbot.store import tables
from runbot.store.db import Database
from runbot.store.types import utcnow

if TYPE_CHECKING:
    from runbot.settings import Settings

ALERTS = tables.Alert.__table__  # type: ignore[attr-defined]
LEASES = tables.VaultLease.__table__  # type: ignore[attr-defined]
ACTOR = "system:retention"
RUN_BATCH = 500
ALERT_BATCH = 2000
# Run-attached tables that retention does not simply delete with their run: the audit trail, and Vault leases
# (a lease still live must stay on record until it is revoked; see _done_leases).
KEEP = frozenset({"audit_events", "vault_leases"})


def _done_leases(now: datetime) -> Any:
    """Leases that are over: revoked, or past their expiry. Live ones stay for the lease sweeper to revoke."""
    return or_(LEASES.c.revoked_at.is_not(None), LEASES.c.expires_at < now)


@dataclass
class RetentionReport:
    runs_deleted: int = 0
    alerts_deleted: int = 0
    audit_deleted: int = 0
    audit_anchor: tuple[int, str] | None = None
    cutoffs: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"{verb} {self.runs_deleted} run(s), {self.alerts_deleted} alert(s), {self.audit_deleted} audit event(s)"]
        out += [f"  {k} older than {v}" for k, v in self.cutoffs.items()]
        if self.audit_anchor:
            out.append(f"  audit chain now anchored at event {self.audit_anchor[0]} {self.audit_anchor[1]}")
        return out


def _run_tables() -> list[Table]:
    """Every table with a run_id column: a deleted run takes its journal, approvals, artifacts... along."""
    return [t for t in tables.SQLModel.metadata.sorted_tables if "run_id" in t.c and t.name not in KEEP and t.name != "runs"]


def _old_runs(db: Database, cutoff: datetime, limit: int) -> list[str]:
    q = select(RUNS.c.id).where(RUNS.c.status.in_([s.value for s in TERMINAL_RUN]),
                                func.coalesce(RUNS.c.finished_at, RUNS.c.updated_at) < cutoff).limit(limit)  # fmt: skip
    with db.read() as conn:
        return [r.id for r in conn.execute(q)]


def purge_runs(db: Database, cutoff: datetime, *, actor: str = ACTOR, dry_run: bool = False) -> int:
    """Delete finished runs older than cutoff with everything attached to them, in audited batches."""
    total = 0
    while True:
        ids = _old_runs(db, cutoff, RUN_BATCH)
        if not ids or dry_run:
            if not dry_run:  # leases that outlived their (deleted) run until the sweeper revoked them
                with db.tx() as conn:
                    gone = ~select(RUNS.c.id).where(RUNS.c.id == LEASES.c.run_id).exists()
                    conn.execute(delete(LEASES).where(gone, _done_leases(utcnow())))
            return total + len(ids) if dry_run else total
        with db.tx() as conn:
            approvals = select(APPROVALS.c.id).where(APPROVALS.c.run_id.in_(ids))
            conn.execute(delete(VOTES).where(VOTES.c.approval_id.in_(approvals)))
            for t in _run_tables():
                conn.execute(delete(t).where(t.c.run_id.in_(ids)))
            conn.execute(delete(LEASES).where(LEASES.c.run_id.in_(ids), _done_leases(utcnow())))
            conn.execute(delete(RUNS).where(RUNS.c.id.in_(ids)))
            audit.append(conn, [audit.Event("retention.runs_deleted", actor=actor, outcome="deleted",
                                            details={"count": len(ids), "cutoff": iso(cutoff), "run_ids": ids})])  # fmt: skip
        total += len(ids)


def purge_alerts(db: Database, cutoff: datetime, *, actor: str = ACTOR, dry_run: bool = False) -> int:
    """Delete raw alerts received before cutoff, except those of open incidents and those intake still holds."""
    open_incidents = select(INCIDENTS.c.id).where(INCIDENTS.c.status == "open")
    conds: list[Any] = [ALERTS.c.received_at < cutoff,
                        or_(ALERTS.c.incident_id.is_(None), ALERTS.c.incident_id.not_in(open_incidents))]  # fmt: skip
    if "pending_since" in ALERTS.c:
        conds.append(ALERTS.c.pending_since.is_(None))
    total = 0
    while True:
        with db.read() as conn:
            ids = [r.id for r in conn.execute(select(ALERTS.c.id).where(and_(*conds)).limit(ALERT_BATCH))]
        if not ids or dry_run:
            return total + len(ids) if dry_run else total
        with db.tx() as conn:
            conn.execute(delete(ALERTS).where(ALERTS.c.id.in_(ids)))
            audit.append(conn, [audit.Event("retention.alerts_deleted", actor=actor, outcome="deleted",
                                            details={"count": len(ids), "cutoff": iso(cutoff)})])  # fmt: skip
        total += len(ids)


def verify_chain(db: Database) -> audit.VerifyResult:
    """Verify the whole chain in short read transactions (a long one would hold SQLite's lock)."""
    head = chain_head(db)
    records = (r for batch in iter_batches(db, ExportFilter(), head[0]) for r in batch)
    return audit.verify_records(records, head)


def purge_audit(db: Database, cutoff: datetime, *, actor: str = ACTOR,
                dry_run: bool = False) -> tuple[int, tuple[int, str] | None]:  # fmt: skip
    """Delete the chain's prefix older than cutoff and record the anchor; refuses on a broken chain."""
    ev = audit.EVENTS
    with db.read() as conn:
        first_new = conn.execute(select(func.min(ev.c.seq)).where(ev.c.ts >= cutoff)).scalar_one()
        last_old = conn.execute(select(func.max(ev.c.seq))).scalar_one() if first_new is None else first_new - 1
        first = conn.execute(select(func.min(ev.c.seq))).scalar_one()
    if last_old is None or first is None or last_old < first:
        return 0, None
    count = last_old - first + 1
    if dry_run:
        return count, None
    check = verify_chain(db)
    if not check.ok:
        raise RuntimeError(f"refusing to delete audit events: the chain is broken ({check.problem})")
    with db.tx() as conn:
        anchor = conn.execute(select(ev.c.seq, ev.c.hash).where(ev.c.seq == last_old)).one()
        deleted = conn.execute(delete(ev).where(ev.c.seq <= last_old)).rowcount
        audit.append(conn, [audit.Event(audit.RETENTION_ACTION, actor=actor, outcome="deleted",
                                        details={"deleted_through_seq": anchor.seq, "deleted_through_hash": anchor.hash,
                                                 "first_deleted_seq": first, "deleted_count": deleted,
                                                 "cutoff": iso(cutoff)})])  # fmt: skip
    return int(deleted), (int(anchor.seq), str(anchor.hash))


def apply_retention(db: Database, settings: Settings, *, now: datetime | None = None, actor: str = ACTOR,
                    dry_run: bool = False) -> RetentionReport:  # fmt: skip
    """Apply the configured retention; unset periods keep everything (audit events by default)."""
    now = now or utcnow()
    rep = RetentionReport(dry_run=dry_run)
    if settings.retention_runs_days:
        cutoff = now - timedelta(days=settings.retention_runs_days)
        rep.cutoffs["runs"] = iso(cutoff)
        rep.runs_deleted = purge_runs(db, cutoff, actor=actor, dry_run=dry_run)
    if settings.retention_alerts_days:
        cutoff = now - timedelta(days=settings.retention_alerts_days)
        rep.cutoffs["alerts"] = iso(cutoff)
        rep.alerts_deleted = purge_alerts(db, cutoff, actor=actor, dry_run=dry_run)
    if settings.retention_audit_days:
        cutoff = now - timedelta(days=settings.retention_audit_days)
        rep.cutoffs["audit events"] = iso(cutoff)
        rep.audit_deleted, rep.audit_anchor = purge_audit(db, cutoff, actor=actor, dry_run=dry_run)
    return rep
