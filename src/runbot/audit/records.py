"""Reading audit events for export: filters, a streaming reader, and the human view of one event.

The reader pages through the chain by `seq` in short read transactions (a slow HTTP client must not hold a
SQLite lock), up to the chain head taken at the start, so an export is a consistent prefix of the chain
even while the engine keeps appending.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from runbot.audit.log import GENESIS, HEAD
from runbot.durations import parse_duration
from runbot.engine.approvals import who_voted
from runbot.engine.state import RUNS, VERSIONS, VOTES
from runbot.redaction import MASK
from runbot.store.db import Database
from runbot.store.raw import Raw as RawSQL
from runbot.store.types import utcnow

BATCH = 5000
_SENSITIVE_KEY = re.compile(r"pass(word|wd)?|secret|token|api[-_]?key|authori[sz]ation|cookie|credential|private[-_]?key",
                            re.IGNORECASE)  # fmt: skip
_SENSITIVE_PAIR = re.compile(
    r'("(?:[^"\\]|\\.)*?(?:pass|secret|token|api[-_]?key|authori[sz]ation|cookie|credential|private[-_]?key)'
    r'(?:[^"\\]|\\.)*":\s?)"((?:[^"\\]|\\.)*)"', re.IGNORECASE)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")


def iso(ts: datetime | None) -> str:
    """UTC ISO 8601 with microseconds and Z: the form the chain hashes."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if ts else ""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (date or date-time; no zone means UTC) or a duration ago, e.g. `24h`, `7d`."""
    raw = text.strip()
    try:
        ago = parse_duration(raw)
    except ValueError:
        pass
    else:
        return (now or utcnow()) - timedelta(seconds=ago)
    try:
        ts = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"invalid time {text!r}: use ISO 8601 (2024-05-01T12:00:00Z) or a duration ago (24h)") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@dataclass(frozen=True)
class ExportFilter:
    """Which events to export; every field narrows the selection, None means no constraint."""

    since: datetime | None = None
    until: datetime | None = None
    incident_id: str | None = None
    run_id: str | None = None
    runbook: str | None = None
    actor: str | None = None  # substring of the recorded actor (Slack user id, cli:user, system)

    @property
    def is_empty(self) -> bool:
        return all(v is None for v in self.as_dict().values())

    def as_dict(self) -> dict[str, Any]:
        return {"since": iso(self.since) or None, "until": iso(self.until) or None, "incident": self.incident_id,
                "run": self.run_id, "runbook": self.runbook, "actor": self.actor}  # fmt: skip

    def where(self) -> tuple[str, dict[str, Any]]:
        """SQL conditions over audit_events (fixed column names, bound values) and their parameters."""
        conds: list[str] = []
        params: dict[str, Any] = {}
        for col, op, name, value in (("ts", ">=", "since", self.since), ("ts", "<", "until", self.until),
                                     ("incident_id", "=", "incident", self.incident_id), ("run_id", "=", "run", self.run_id),
                                     ("runbook", "=", "runbook", self.runbook)):  # fmt: skip
            if value is not None:
                conds.append(f"{col} {op} :f_{name}")
                params[f"f_{name}"] = value
        if self.actor is not None:
            escaped = self.actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append("actor LIKE :f_actor ESCAPE '\\'")
            params["f_actor"] = f"%{escaped}%"
        return "".join(f" AND {c}" for c in conds), params


def chain_head(db: Database) -> tuple[int, str]:
    with db.read() as conn:
        row = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1)).first()
    return (int(row.seq), str(row.hash)) if row else (0, GENESIS)


FIELDS = ("seq", "ts", "actor", "action", "run_id", "step_id", "incident_id", "runbook", "runbook_version",
          "outcome", "details", "prev_hash", "hash")  # fmt: skip
Raw = tuple[Any, ...]  # one row in FIELDS order; ts and details as the driver returns them


def raw_ts(ts: Any) -> str:
    """The driver's ts as the hashed ISO string. SQLite hands back naive UTC text with microseconds."""
    if isinstance(ts, str):
        return f"{ts[:10]}T{ts[11:26]}Z" if len(ts) == 26 else iso(datetime.fromisoformat(ts).replace(tzinfo=UTC))
    return iso(ts if ts.tzinfo else ts.replace(tzinfo=UTC))


def raw_details(details: Any) -> Any:
    return json.loads(details) if isinstance(details, str | bytes) else details


def normalize(row: Raw) -> dict[str, Any]:
    """A raw row as a record: ts as the hashed ISO string, details as a dict."""
    rec = dict(zip(FIELDS, row, strict=True))
    rec["ts"] = raw_ts(rec["ts"])
    rec["details"] = raw_details(rec["details"])
    return rec


def iter_raw(db: Database, flt: ExportFilter, upto: int, batch: int = BATCH) -> Iterator[list[Raw]]:
    """Rows matching `flt` with seq <= upto, in chain order, a batch per short read transaction.

    Straight from the driver cursor: building SQLAlchemy rows would cost more than the export itself.
    """
    where, params = flt.where()
    sql = f"SELECT {', '.join(FIELDS)} FROM audit_events WHERE seq > :last AND seq <= :upto{where} ORDER BY seq LIMIT {int(batch)}"  # noqa: S608 (fixed columns; values are bound)
    last = 0
    while True:
        with db.read() as conn:
            rows = RawSQL(conn).execute(sql, {**params, "last": last, "upto": upto}).fetchall()
        if not rows:
            return
        yield rows
        last = rows[-1][0]
        if len(rows) < batch:
            return


def iter_batches(db: Database, flt: ExportFilter, upto: int, batch: int = BATCH) -> Iterator[list[dict[str, Any]]]:
    """Like iter_raw, as records with `ts` as the ISO 8601 string the chain hashes (UTC, microseconds, Z)."""
    for rows in iter_raw(db, flt, upto, batch):
        yield [normalize(r) for r in rows]


# ---- the human view ----------------------------------------------------------------------------------------


def mask_sensitive(obj: Any, key: str = "") -> Any:
    """Defence in depth for human formats: values under secret-looking keys become ****.

    Secrets are already redacted when events are written; this also masks e.g. a literal token a runbook
    author put in a header. `secrets` (the list of secret *references* a step used) is kept.
    """
    if isinstance(obj, dict):
        return {k: mask_sensitive(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_sensitive(v, key) for v in obj]
    if isinstance(obj, str) and key != "secrets" and _SENSITIVE_KEY.search(key) and MASK not in obj:
        return MASK
    return obj


def actor_kind(actor: str) -> str:
    if actor == "system":
        return "system"
    if actor.startswith("cli:"):
        return "cli"
    if actor.startswith("slack:") or _SLACK_ID.match(actor):
        return "slack"
    return "user"


_APPROVAL_ID = re.compile(r'"approval_id":\s?"([^"\\]+)"')


def raw_approval_ids(rows: list[Raw]) -> set[str]:
    """Approval ids named by the approval events among raw rows, without parsing every details column."""
    ids: set[str] = set()
    for r in rows:
        if r[3].startswith("approval."):
            d = r[10]
            if isinstance(d, str):
                m = _APPROVAL_ID.search(d)
                if m:
                    ids.add(m.group(1))
            elif isinstance(d, dict) and d.get("approval_id"):
                ids.add(str(d["approval_id"]))
    return ids


def approval_votes(db: Database, rows: list[dict[str, Any]], ids: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Votes of the approvals decided or voted on in this batch, so each event can name its approvers."""
    if ids is None:
        ids = {str(a) for r in rows if r["action"].startswith("approval.") and (a := (r["details"] or {}).get("approval_id"))}
    if not ids:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    with db.read() as conn:
        for v in conn.execute(select(VOTES).where(VOTES.c.approval_id.in_(ids)).order_by(VOTES.c.at, VOTES.c.id)).mappings():
            out.setdefault(v["approval_id"], []).append(dict(v))
    return out


def run_versions(db: Database, run_ids: set[str]) -> dict[str, str]:
    """Short version hashes of these runs' runbooks, for events recorded without one (e.g. votes)."""
    run_ids = {r for r in run_ids if r}
    if not run_ids:
        return {}
    q = select(RUNS.c.id, VERSIONS.c.version_hash).join(VERSIONS, VERSIONS.c.id == RUNS.c.runbook_version_id)
    with db.read() as conn:
        return {r.id: r.version_hash[:12] for r in conn.execute(q.where(RUNS.c.id.in_(run_ids)))}


def decision_of(action: str, actor: str, outcome: str | None, details: dict[str, Any], ts: str,
                votes: dict[str, list[dict[str, Any]]] | None) -> tuple[str, str, list[str]]:  # fmt: skip
    """(actor's display name, decision, approvers) of an approval or in-doubt decision event; blanks otherwise."""
    if action == "step.decided":
        return "", outcome or "", []
    if not action.startswith("approval."):
        return "", "", []
    decision = details.get("decision") or ""
    name = ""
    if details.get("user_name") and actor in (details.get("user_id"), f"slack:{details.get('user_id')}"):
        name = details["user_name"]
    if action == "approval.requested":
        return name, decision, [str(a) for a in details.get("approvers") or []]
    seen = [v for v in (votes or {}).get(str(details.get("approval_id")), []) if iso(v["at"]) <= ts]
    approvers = [f"{who_voted(v['user_id'], v['user_name'], v.get('on_behalf_of'))}: {v['decision']}" for v in seen]
    if not approvers and details.get("user_id"):
        approvers = [f"{who_voted(details.get('user_id'), details.get('user_name'), details.get('on_behalf_of'))}: {decision}"]
    return name, decision, approvers


def split_params(details: dict[str, Any]) -> tuple[str, str]:
    """(parameters, other details) as masked compact JSON text."""
    params = details.get("params")
    rest = {k: v for k, v in details.items() if k != "params"} if params is not None else details
    return mask_json_text(compact_json(params)), mask_json_text(compact_json(rest))


def view(rec: dict[str, Any], votes: dict[str, list[dict[str, Any]]] | None = None,
         versions: dict[str, str] | None = None) -> dict[str, Any]:
    """One event as people read it: who, what, on which target, with what parameters, decided by whom.

    `parameters` and `details` are compact JSON text with secret-looking values masked.
    """
    details = rec.get("details") or {}
    action, actor = rec["action"], rec["actor"]
    ts = rec["ts"] if isinstance(rec["ts"], str) else iso(rec["ts"])
    actor_name, decision, approvers = decision_of(action, actor, rec.get("outcome"), details, ts, votes)
    params, rest = split_params(details)
    return {
        "seq": rec["seq"],
        "time": ts,
        "actor": actor,
        "actor_kind": actor_kind(actor),
        "actor_name": actor_name,
        "action": action,
        "incident_id": rec.get("incident_id") or "",
        "run_id": rec.get("run_id") or "",
        "step_id": rec.get("step_id") or "",
        "runbook": rec.get("runbook") or "",
        "runbook_version": rec.get("runbook_version") or (versions or {}).get(rec.get("run_id") or "", ""),
        "parameters": params,
        "decision": decision,
        "approvers": approvers,
        "outcome": rec.get("outcome") or "",
        "details": rest,
        "reason": str(mask_sensitive(details.get("reason") or "", "reason")),
        "prev_hash": rec["prev_hash"],
        "hash": rec["hash"],
        "failure": is_failure(action, rec.get("outcome")),
    }


FAILURE_OUTCOMES = frozenset({"failed", "denied", "expired", "aborted", "cancelled", "in_doubt", "held", "skipped",
                              "refused", "throttled", "error"})  # fmt: skip


def is_failure(action: str, outcome: str | None) -> bool:
    """What a reviewer should see highlighted: failures, refusals, denials and anything held back."""
    if outcome in FAILURE_OUTCOMES and action != "step.skipped":
        return True
    return action.endswith((".failed", ".denied", ".refused", ".throttled", ".in_doubt"))


def compact_json(value: Any) -> str:
    if value is None or value == {} or value == []:
        return ""
    return _ENCODER.encode(value)


def mask_json_text(text: str) -> str:
    """mask_sensitive for compact JSON text, in one regex pass (the export's hot path)."""
    if not text:
        return text
    low = text.lower()
    if not ("pass" in low or "secret" in low or "token" in low or "authori" in low or "cookie" in low
            or "credential" in low or "private" in low or "api_key" in low or "apikey" in low
            or "api-key" in low):  # quick test before the regex
        return text
    return _SENSITIVE_PAIR.sub(lambda m: m.group(0) if MASK in m.group(2) else f'{m.group(1)}"{MASK}"', text)
