"""Incidents: one per Alertmanager group (receiver, groupKey) while it fires; reopened when an alert flaps.

Receivers are tenants: an incident belongs to one receiver, and only that receiver's alerts join, reopen or
resolve it (a groupKey or fingerprint sent by another receiver never reaches it).

All functions run inside the intake transaction and return the audit events they imply, so an incident's
state and its audit record commit together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, func, insert, select, update

from runbot.audit.log import Event, append
from runbot.domain import LIVE_RUN
from runbot.engine.state import APPROVALS, INCIDENTS, OUTBOX, RUNS, new_id
from runbot.store import tables
from runbot.store.types import utcnow

if TYPE_CHECKING:
    from runbot.engine.runner import Engine

ALERTS = tables.Alert.__table__  # type: ignore[attr-defined]
OPEN, RESOLVED = "open", "resolved"


@dataclass
class Touched:
    """What one intake batch did to incidents, for the audit trail and the caller's bookkeeping."""

    events: list[Event] = field(default_factory=list)
    open_by_group: dict[tuple[str, str], str] = field(default_factory=dict)  # (receiver, group) -> incident
    to_check: set[str] = field(default_factory=set)  # incidents that may now be fully resolved


def title_for(labels: dict[str, Any], annotations: dict[str, Any]) -> str:
    name = str(labels.get("alertname") or "alert")
    summary = annotations.get("summary") or annotations.get("description")
    return f"{name}: {summary}"[:200] if summary else name[:200]


def incident_for(conn: Connection, row: dict[str, Any], now: datetime, flap_seconds: float, t: Touched) -> str:
    """The incident an alert belongs to: the group's open one, a flapped one reopened, or a new one.

    Set flap_seconds to 0 for an alert that is already resolved: it never reopens anything.
    """
    group = row["group_key"] or f"fingerprint:{row['fingerprint']}"
    receiver = row["receiver"] or ""
    key = (receiver, group)
    cached = t.open_by_group.get(key)
    if cached is not None:
        return cached
    inc = conn.execute(select(INCIDENTS.c.id).where(INCIDENTS.c.group_key == group, INCIDENTS.c.receiver == receiver,
                                                    INCIDENTS.c.status == OPEN)
                       .order_by(INCIDENTS.c.opened_at.desc()).limit(1)).first()  # fmt: skip
    if inc is not None:
        t.open_by_group[key] = inc.id
        return str(inc.id)
    flapped = _flapped_incident(conn, row, now, flap_seconds)
    if flapped is not None:
        conn.execute(update(INCIDENTS).where(INCIDENTS.c.id == flapped["id"]).values(
            status=OPEN, resolved_at=None, updated_at=now, reopened=INCIDENTS.c.reopened + 1))  # fmt: skip
        t.events.append(Event("incident.reopened", actor="alertmanager", incident_id=flapped["id"], outcome=OPEN,
                              details={"alert_id": row["id"], "fingerprint": row["fingerprint"],
                                       "resolved_at": flapped["resolved_at"].isoformat(),
                                       "reason": f"alert fired again within {flap_seconds:g}s of resolving"}))  # fmt: skip
        if flapped["group_key"] == group:
            t.open_by_group[key] = flapped["id"]
        return str(flapped["id"])
    labels = row["group_labels"] or row["labels"] or {}
    inc_id = new_id("i")
    conn.execute(insert(INCIDENTS).values(
        id=inc_id, group_key=group, receiver=receiver, status=OPEN, title=title_for(row["labels"] or {}, row["annotations"] or {}),
        severity=(row["labels"] or {}).get("severity"), labels=labels, opened_at=now, resolved_at=None,
        updated_at=now, reopened=0))  # fmt: skip
    t.events.append(Event("incident.opened", actor="alertmanager", incident_id=inc_id, outcome=OPEN,
                          details={"group_key": group, "receiver": receiver, "labels": labels,
                                   "alert_id": row["id"]}))  # fmt: skip
    t.open_by_group[key] = inc_id
    return inc_id


def _flapped_incident(conn: Connection, row: dict[str, Any], now: datetime, flap_seconds: float) -> dict[str, Any] | None:
    if flap_seconds <= 0:
        return None
    prev = conn.execute(
        select(INCIDENTS).join(ALERTS, ALERTS.c.incident_id == INCIDENTS.c.id)
        .where(ALERTS.c.fingerprint == row["fingerprint"], ALERTS.c.receiver == (row["receiver"] or ""),
               INCIDENTS.c.receiver == (row["receiver"] or ""), ALERTS.c.id != row["id"],
               INCIDENTS.c.status == RESOLVED, INCIDENTS.c.resolved_at >= now - timedelta(seconds=flap_seconds))
        .order_by(INCIDENTS.c.resolved_at.desc()).limit(1)
    ).mappings().first()  # fmt: skip
    return dict(prev) if prev else None


def owners_elsewhere(conn: Connection, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The same alert (fingerprint, startsAt) as other receivers hold it: what a resolution from this
    receiver may not touch (their receiver, status and incident)."""
    q = (select(ALERTS.c.receiver, ALERTS.c.status, ALERTS.c.incident_id)
         .where(ALERTS.c.fingerprint == row["fingerprint"], ALERTS.c.starts_at == row["starts_at"],
                ALERTS.c.receiver != (row["receiver"] or ""))
         .order_by(ALERTS.c.receiver).limit(10))  # fmt: skip
    return [dict(r) for r in conn.execute(q).mappings()]


def resolve_if_done(conn: Connection, engine: Engine, incident_id: str, now: datetime, t: Touched) -> bool:
    """Resolve the incident when none of its alerts fires (and none of its group waits to be matched)."""
    inc = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == incident_id)).mappings().first()
    if inc is None or inc["status"] != OPEN:
        return False
    firing = conn.execute(select(func.count()).select_from(ALERTS).where(
        ALERTS.c.status == "firing",
        (ALERTS.c.incident_id == incident_id) | and_(ALERTS.c.incident_id.is_(None), ALERTS.c.receiver == inc["receiver"],
                                                     ALERTS.c.group_key == inc["group_key"]),
    )).scalar_one()  # fmt: skip
    if firing:
        return False
    conn.execute(update(INCIDENTS).where(INCIDENTS.c.id == incident_id).values(
        status=RESOLVED, resolved_at=now, updated_at=now))  # fmt: skip
    for k, v in list(t.open_by_group.items()):
        if v == incident_id:
            del t.open_by_group[k]
    told = tell_runs(conn, engine, incident_id)
    t.events.append(Event("incident.resolved", actor="alertmanager", incident_id=incident_id, outcome=RESOLVED,
                          details={"runs_cancelled": told["cancel"], "runs_continuing": told["continue"]}))  # fmt: skip
    return True


def tell_runs(conn: Connection, engine: Engine, incident_id: str) -> dict[str, list[str]]:
    """Runs of a resolved incident still waiting on an approval: cancel them or let them continue (on_resolve)."""
    rows = conn.execute(
        select(RUNS.c.id, RUNS.c.runbook_version_id, RUNS.c.runbook_name).distinct()
        .join(APPROVALS, and_(APPROVALS.c.run_id == RUNS.c.id, APPROVALS.c.status == "pending"))
        .where(RUNS.c.incident_id == incident_id, RUNS.c.status.in_([s.value for s in LIVE_RUN]))
    ).all()  # fmt: skip
    out: dict[str, list[str]] = {"cancel": [], "continue": []}
    now = None
    for r in rows:
        policy = engine.book_for(r.runbook_version_id).spec.on_resolve
        if policy == "cancel":
            engine.cancel(r.id, actor="alertmanager", reason="the incident resolved while an approval was pending "
                          "(runbook on_resolve: cancel)", conn=conn)  # fmt: skip
        else:
            append(conn, [Event("run.incident_resolved", actor="alertmanager", run_id=r.id, incident_id=incident_id,
                                runbook=r.runbook_name, outcome="continue",
                                details={"reason": "the incident resolved; runbook on_resolve: continue"})])  # fmt: skip
        out[policy].append(r.id)
        if engine.outbox_enabled:
            now = now or utcnow()
            conn.execute(insert(OUTBOX).values(topic="incident.resolved", run_id=r.id, created_at=now,
                                               next_attempt_at=now,
                                               payload={"run_id": r.id, "incident_id": incident_id, "action": policy}))  # fmt: skip
    return out
