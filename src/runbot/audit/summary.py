"""A short plain-text digest of the audit trail, for Slack (`/runbot audit`) and the terminal."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from runbot.audit.records import ExportFilter, approval_votes, iter_batches, view
from runbot.audit.records import chain_head as _chain_head
from runbot.store.db import Database
from runbot.store.types import utcnow

DEFAULT_WINDOW = timedelta(hours=24)


def _hm(ts: str) -> str:
    return ts[:19].replace("T", " ") + "Z" if ts else "-"


def summarize(db: Database, run_id: str | None = None, *, incident_id: str | None = None,
              since: datetime | None = None, until: datetime | None = None, runbook: str | None = None,
              actor: str | None = None, limit: int = 10, link: str | None = None) -> str:  # fmt: skip
    """Counts, decisions with approvers, failures and the latest events; the last 24 h when nothing narrows it.

    `link` (e.g. an export URL) is appended for the full record. The text is Slack mrkdwn-safe plain text.
    """
    if since is None and run_id is None and incident_id is None and until is None:
        since = utcnow() - DEFAULT_WINDOW
    flt = ExportFilter(since=since, until=until, incident_id=incident_id, run_id=run_id, runbook=runbook, actor=actor)
    head = _chain_head(db)
    actions: Counter[str] = Counter()
    decisions: list[str] = []
    failures: list[dict[str, Any]] = []
    latest: list[dict[str, Any]] = []
    first = last = ""
    total = 0
    for rows in iter_batches(db, flt, head[0]):
        votes = approval_votes(db, rows)
        for r in rows:
            v = view(r, votes)
            total += 1
            first = first or v["time"]
            last = v["time"]
            actions[v["action"]] += 1
            if v["action"] in ("approval.approved", "approval.denied"):
                decisions.append(f"{v['outcome']} {v['step_id']} ({v['run_id']}) by {', '.join(v['approvers']) or v['actor']}")
            if v["failure"]:
                failures.append(v)
                failures = failures[-limit:]
            latest.append(v)
            latest = latest[-limit:]
    scope = [f"{k} {val}" for k, val in flt.as_dict().items() if val is not None]
    lines = [f"Audit trail ({'; '.join(scope) or 'everything'}): {total} event(s)"
             + (f" from {_hm(first)} to {_hm(last)}" if total else "")]  # fmt: skip
    if total:
        runs = {k.split(".", 1)[1]: n for k, n in actions.items() if k.startswith("run.") and k != "run.finished"}
        lines.append("• actions: " + ", ".join(f"{a} {n}" for a, n in sorted(actions.items())[:12]))
        if runs:
            lines.append("• runs: " + ", ".join(f"{k} {n}" for k, n in sorted(runs.items())))
        lines.append(f"• decisions: {len(decisions)}" + ("".join(f"\n    - {d}" for d in decisions[-limit:])))
        lines.append(f"• failures and refusals: {len(failures)}"
                     + "".join(f"\n    - {_hm(f['time'])} {f['action']} {f['step_id'] or f['run_id']} {f['outcome']}"
                               for f in failures))  # fmt: skip
        lines.append("• latest:" + "".join(
            f"\n    - #{v['seq']} {_hm(v['time'])} {v['actor_name'] or v['actor']} {v['action']}"
            f"{' ' + v['step_id'] if v['step_id'] else ''}{' → ' + v['outcome'] if v['outcome'] else ''}"
            for v in latest))  # fmt: skip
    lines.append(f"Chain head: #{head[0]} {head[1][:16]}… (compare with your anchored head)")
    if link:
        lines.append(f"Full export: {link}")
    return "\n".join(lines)
