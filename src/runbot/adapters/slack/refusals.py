"""What Slack refused for a run, for `runbot runs show` (read from the audit trail, where delivery records it)."""

from __future__ import annotations

from sqlalchemy import select

from runbot.audit.log import EVENTS
from runbot.store.db import Database


def refusal_lines(db: Database, run_id: str) -> list[str]:
    """One line per message Slack refused for good (and what was sent instead, for an approval)."""
    with db.read() as conn:
        rows = conn.execute(select(EVENTS.c.ts, EVENTS.c.details).where(EVENTS.c.run_id == run_id,
                                                                      EVENTS.c.action == "slack.refused")
                            .order_by(EVENTS.c.seq)).all()  # fmt: skip
    out = []
    for ts, details in rows:
        d = details or {}
        what = str(d.get("what") or "a message")
        extra = "; a plain-text request with the approve command was posted instead" if what.startswith("approval") else ""
        out.append(f"slack refused {what} at {ts:%Y-%m-%d %H:%M:%S}: {d.get('error')}{extra}")
    return out
