"""Read-only views of alerts, incidents, runs and throttles, as plain JSON-ready dicts (API and CLI share them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from runbot.adapters.alertmanager.payload import alert_links
from runbot.engine.state import APPROVALS, INCIDENTS, RUNS, STEPS
from runbot.store import tables

ALERTS = tables.Alert.__table__  # type: ignore[attr-defined]
THROTTLES = tables.AlertThrottle.__table__  # type: ignore[attr-defined]
REJECTS = tables.WebhookReject.__table__  # type: ignore[attr-defined]
DELIVERIES = tables.WebhookDelivery.__table__  # type: ignore[attr-defined]
DELIVERY_FIELDS = ("id", "received_at", "receiver", "alerts", "processed_at", "new", "duplicates", "error")
PROGRESS = tables.WebhookDeliveryProgress.__table__  # type: ignore[attr-defined]
MAX_LIMIT = 1000

ALERT_FIELDS = ("id", "alertname", "status", "fingerprint", "starts_at", "ends_at", "labels", "annotations",
                "generator_url", "incident_id", "receiver", "group_key", "received_at", "matched", "note",
                "pending_since", "extras")  # fmt: skip
RUN_FIELDS = ("id", "runbook_name", "status", "incident_id", "alert_id", "requester", "manual", "created_at",
              "started_at", "finished_at", "reason")  # fmt: skip


def jsonable(row: Any, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    d = dict(row)
    if fields is not None:
        d = {k: d.get(k) for k in fields}
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}


def _limit(n: int) -> int:
    return max(1, min(int(n), MAX_LIMIT))


def alert_view(row: Any) -> dict[str, Any]:
    """An alert as the API shows it: its columns, and `links` (Grafana's dashboard, panel, silence and image
    URLs, plus the generator URL) so every reader finds them in one place."""
    out = jsonable(row, ALERT_FIELDS)
    out["links"] = alert_links(out.get("extras"), out.get("generator_url"))
    return out


def list_alerts(conn: Connection, *, status: str | None = None, incident: str | None = None,
                unhandled: bool = False, pending: bool = False, limit: int = 50) -> list[dict[str, Any]]:  # fmt: skip
    q = select(ALERTS).order_by(ALERTS.c.received_at.desc(), ALERTS.c.id).limit(_limit(limit))
    if status:
        q = q.where(ALERTS.c.status == status)
    if incident:
        q = q.where(ALERTS.c.incident_id == incident)
    if unhandled:
        q = q.where(ALERTS.c.matched.is_(False))
    if pending:
        q = q.where(ALERTS.c.pending_since.is_not(None))
    return [alert_view(r) for r in conn.execute(q).mappings()]


def _incident_counts(conn: Connection, ids: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {i: {"alerts_firing": 0, "alerts_resolved": 0, "runs": 0} for i in ids}
    if not ids:
        return out
    for inc, status, n in conn.execute(select(ALERTS.c.incident_id, ALERTS.c.status, func.count())
                                       .where(ALERTS.c.incident_id.in_(ids))
                                       .group_by(ALERTS.c.incident_id, ALERTS.c.status)):  # fmt: skip
        out[inc][f"alerts_{status}"] = n
    for inc, n in conn.execute(select(RUNS.c.incident_id, func.count()).where(RUNS.c.incident_id.in_(ids))
                               .group_by(RUNS.c.incident_id)):  # fmt: skip
        out[inc]["runs"] = n
    return out


def list_incidents(conn: Connection, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    q = select(INCIDENTS).order_by(INCIDENTS.c.opened_at.desc(), INCIDENTS.c.id).limit(_limit(limit))
    if status:
        q = q.where(INCIDENTS.c.status == status)
    rows = [jsonable(r) for r in conn.execute(q).mappings()]
    counts = _incident_counts(conn, [r["id"] for r in rows])
    return [{**r, **counts[r["id"]]} for r in rows]


def resolve_incident_id(conn: Connection, ref: str) -> str | None:
    """An incident id from a unique prefix; None when unknown, ValueError when ambiguous."""
    ids = [r.id for r in conn.execute(select(INCIDENTS.c.id).where(INCIDENTS.c.id.like(f"{ref}%")).limit(3))]
    if len(ids) > 1:
        raise ValueError(f"incident id prefix {ref!r} is ambiguous ({', '.join(ids[:2])}, ...)")
    return ids[0] if ids else None


def incident_detail(conn: Connection, incident_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == incident_id)).mappings().first()
    if row is None:
        return None
    out = {**jsonable(row), **_incident_counts(conn, [incident_id])[incident_id]}
    out["alerts"] = [alert_view(r) for r in conn.execute(
        select(ALERTS).where(ALERTS.c.incident_id == incident_id).order_by(ALERTS.c.starts_at, ALERTS.c.id)).mappings()]  # fmt: skip
    out["runs"] = list_runs(conn, incident=incident_id, limit=MAX_LIMIT)
    return out


def list_runs(conn: Connection, *, status: str | None = None, incident: str | None = None,
              runbook: str | None = None, limit: int = 50) -> list[dict[str, Any]]:  # fmt: skip
    q = select(RUNS).order_by(RUNS.c.created_at.desc(), RUNS.c.id).limit(_limit(limit))
    if status:
        q = q.where(RUNS.c.status == status)
    if incident:
        q = q.where(RUNS.c.incident_id == incident)
    if runbook:
        q = q.where(RUNS.c.runbook_name == runbook)
    rows = [jsonable(r, RUN_FIELDS) for r in conn.execute(q).mappings()]
    if rows:
        ids = [r["id"] for r in rows]
        pending = {r.run_id for r in conn.execute(select(APPROVALS.c.run_id).where(
            APPROVALS.c.run_id.in_(ids), APPROVALS.c.status == "pending"))}  # fmt: skip
        for r in rows:
            r["awaiting_approval"] = r["id"] in pending
    return rows


def run_detail(conn: Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
    if row is None:
        return None
    out = jsonable(row, (*RUN_FIELDS, "params"))
    out["steps"] = [jsonable(r, ("step_id", "step_type", "attempt", "status", "summary", "error", "started_at",
                                 "finished_at")) for r in conn.execute(
        select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.id)).mappings()]  # fmt: skip
    out["approvals"] = [jsonable(r, ("id", "step_id", "status", "min_approvals", "requested_at", "expires_at",
                                     "decided_at", "decided_by")) for r in conn.execute(
        select(APPROVALS).where(APPROVALS.c.run_id == run_id)).mappings()]  # fmt: skip
    return out


def throttle_summary(conn: Connection, since: datetime | None = None) -> list[dict[str, Any]]:
    """One line per runbook: how many alerts a rate limit kept from starting a run, and when."""
    q = select(THROTTLES.c.runbook_name, func.count(), func.min(THROTTLES.c.at), func.max(THROTTLES.c.at)) \
        .group_by(THROTTLES.c.runbook_name).order_by(THROTTLES.c.runbook_name)  # fmt: skip
    if since is not None:
        q = q.where(THROTTLES.c.at >= since)
    out = []
    for name, n, first, last in conn.execute(q):
        out.append({"runbook": name, "alerts": n, "first": _iso(first), "last": _iso(last)})
    return out


def _iso(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):  # SQLite aggregates skip the column type
        return datetime.fromisoformat(v).isoformat() + ("" if "+" in v else "+00:00")
    return str(v.isoformat())


def list_rejects(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute(select(REJECTS).order_by(REJECTS.c.id.desc()).limit(_limit(limit))).mappings()
    return [{**jsonable(r, ("id", "received_at", "receiver", "status_code", "error", "body_size", "truncated")),
             "body": bytes(r["body"]).decode("utf-8", "replace")} for r in rows]  # fmt: skip


def delivery(conn: Connection, delivery_id: int) -> dict[str, Any] | None:
    """An accepted webhook notification: when it was unpacked, how many alerts were new and how many repeats."""
    cols = [DELIVERIES.c[f] for f in DELIVERY_FIELDS]
    row = conn.execute(select(*cols).where(DELIVERIES.c.id == delivery_id)).mappings().first()
    if row is None:
        return None
    out = jsonable(row)
    out["state"] = "pending" if row["processed_at"] is None else ("failed" if row["error"] else "unpacked")
    out["unpacked"] = row["alerts"] if out["state"] == "unpacked" else 0
    if row["processed_at"] is None:  # a big one may be part way through (slices)
        progress = conn.execute(select(PROGRESS).where(PROGRESS.c.delivery_id == delivery_id)).mappings().first()
        if progress is not None:
            out.update(unpacked=progress["unpacked"], new=progress["new"], duplicates=progress["duplicates"])
    return out
