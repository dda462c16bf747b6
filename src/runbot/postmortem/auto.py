"""The postmortem draft written when an incident resolves (RUNBOT_POSTMORTEM_AUTO, on by default).

`incident_resolved(rt, id)` is the hook intake may call right after it commits a resolution; the
housekeeping loop also calls `generate_pending` every half minute, so a resolution is never missed (a
crash between resolving and rendering, or an intake that does not call the hook). Each incident gets
one draft: the `postmortem.generated` audit event is the record, written with the outbox row
(topic `postmortem.ready`, for the Slack side to post in the incident thread) in one transaction.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, and_, insert, select, text

from runbot.audit import log as audit
from runbot.engine.state import INCIDENTS, OUTBOX
from runbot.postmortem.context import gather
from runbot.postmortem.render import digest, render_facts
from runbot.store.types import utcnow

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.postmortem")
ACTION = "postmortem.generated"
TOPIC = "postmortem.ready"
WINDOW = timedelta(hours=1)  # incidents resolved longer ago than this are left alone (e.g. on first start)
SLACK_TEXT_LIMIT = 40_000


def _done(conn: Connection, incident_id: str) -> bool:
    ev = audit.EVENTS
    return conn.execute(select(ev.c.seq).where(ev.c.action == ACTION, ev.c.incident_id == incident_id).limit(1)).first() is not None


def incident_resolved(rt: Runtime, incident_id: str) -> Path | None:
    """Render, save and queue the draft for a resolved incident, once; returns where it was saved."""
    s = rt.settings
    if not s.postmortem_auto:
        return None
    with rt.db.read() as conn:
        if _done(conn, incident_id):
            return None
    facts = gather(rt.db, incident_id)
    if facts.incident["status"] != "resolved":
        return None
    doc = render_facts(facts, s.postmortem_format, templates_dir=s.postmortem_templates_dir)
    slack_text = render_facts(facts, "md", templates_dir=s.postmortem_templates_dir, images="omit")
    path = s.data_dir / "postmortems" / f"{incident_id}.{s.postmortem_format}"
    now = utcnow()
    with rt.db.tx() as conn:
        if conn.dialect.name == "postgresql":  # replicas: one draft per incident
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"postmortem:{incident_id}"})
        if _done(conn, incident_id):
            return None
        payload: dict[str, Any] = {"incident_id": incident_id, "format": s.postmortem_format, "path": str(path),
                                   "text": slack_text[:SLACK_TEXT_LIMIT], "graph_artifact_ids": [g.id for g in facts.graphs]}  # fmt: skip
        if rt.engine.outbox_enabled:
            conn.execute(insert(OUTBOX).values(topic=TOPIC, run_id=None, payload=payload, created_at=now,
                                               next_attempt_at=now))  # fmt: skip
        audit.append(conn, [audit.Event(ACTION, actor="system", incident_id=incident_id, outcome="draft",
                                        details={"path": str(path), "format": s.postmortem_format,
                                                 "sha256": digest(doc), "graphs": len(facts.graphs)})])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    log.info("postmortem draft written", incident_id=incident_id, path=str(path))
    return path


def generate_pending(rt: Runtime, window: timedelta = WINDOW) -> list[str]:
    """Drafts for incidents resolved within `window` that have none yet."""
    if not rt.settings.postmortem_auto:
        return []
    ev = audit.EVENTS
    done = select(ev.c.incident_id).where(ev.c.action == ACTION, ev.c.incident_id.is_not(None))
    q = select(INCIDENTS.c.id).where(and_(INCIDENTS.c.status == "resolved", INCIDENTS.c.resolved_at >= utcnow() - window,
                                          INCIDENTS.c.id.not_in(done))).order_by(INCIDENTS.c.resolved_at)  # fmt: skip
    with rt.db.read() as conn:
        ids = [r.id for r in conn.execute(q)]
    made = []
    for incident_id in ids:
        try:
            if incident_resolved(rt, incident_id) is not None:
                made.append(incident_id)
        except Exception as exc:  # one broken incident must not stop the others; it is retried next round
            log.error("postmortem draft failed", incident_id=incident_id, error=f"{type(exc).__name__}: {exc}")
    return made
