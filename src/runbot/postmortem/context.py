"""Everything a postmortem template sees, gathered read-only from the store for one incident.

Times come from the recorded rows (alerts, incident, step journal) and durations are computed from them:

- start: the earliest alert `startsAt` (impact began); the incident's opening if no alert has one
- detected: when runbot first heard of it (earliest alert received, or the incident opened)
- first diagnostic: the first diagnostic step that finished successfully
- mitigated: the first successful remediation, or its verification when it had one
- resolved: when the incident resolved

time to detect = detected - start; to first diagnostic = first diagnostic - detected;
to mitigate = mitigated - start; to resolve = resolved - start.
"""

from __future__ import annotations

import base64
import importlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from runbot.adapters.alertmanager.payload import alert_links
from runbot.audit.records import ExportFilter, chain_head, iter_batches, mask_sensitive
from runbot.domain import StepKind
from runbot.durations import format_duration
from runbot.engine.approvals import who_voted
from runbot.engine.state import APPROVALS, ARTIFACTS, INCIDENTS, RUNS, STEPS, VERSIONS, VOTES
from runbot.runbooks.loader import parse_source
from runbot.runbooks.model import Runbook, StepSpec
from runbot.steps.registry import available_types
from runbot.store import tables
from runbot.store.db import Database
from runbot.store.types import utcnow

ALERTS = tables.Alert.__table__  # type: ignore[attr-defined]
OUTPUT_CHARS = 1500
QUIET_ACTIONS = frozenset({"run.waiting", "run.resumed", "step.waiting", "run.started", "step.started"})
REFUSAL_ACTIONS = ("step.held", "run.queued", "approval.refused", "intake.throttled")


class UnknownIncident(LookupError):
    """No incident with that id; the message says so in words a Slack user understands."""


@dataclass
class Entry:
    """One line of the merged timeline."""

    at: datetime
    source: str  # alert | incident | run | step | approval | decision
    text: str
    actor: str = ""
    failure: bool = False
    seq: int = 0


@dataclass
class Graph:
    id: int
    name: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def data_uri(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode()}"


@dataclass
class StepView:
    run_id: str
    runbook: str
    step_id: str
    name: str
    type: str
    role: str  # diagnostic | remediation | verification | control
    status: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    summary: str
    error: str
    output: str
    params: str
    graphs: list[Graph] = field(default_factory=list)
    approval: dict[str, Any] | None = None
    verification: StepView | None = None


@dataclass
class Facts:
    incident: dict[str, Any]
    alerts: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    steps: list[StepView]
    timeline: list[Entry]
    refused: list[Entry]
    times: dict[str, datetime | None]
    durations: dict[str, str]
    services: list[str]
    labels: dict[str, Any]
    owners: list[str]
    generated_at: datetime
    chain_head: tuple[int, str]

    @property
    def diagnostics(self) -> list[StepView]:
        return [s for s in self.steps if s.role == "diagnostic"]

    @property
    def remediations(self) -> list[StepView]:
        return [s for s in self.steps if s.role == "remediation"]

    @property
    def graphs(self) -> list[Graph]:
        return [g for s in self.steps for g in s.graphs]

    def as_template_context(self) -> dict[str, Any]:
        return {"incident": self.incident, "alerts": self.alerts, "runs": self.runs, "steps": self.steps,
                "diagnostics": self.diagnostics, "remediations": self.remediations, "timeline": self.timeline,
                "refused": self.refused, "times": self.times, "durations": self.durations,
                "services": self.services, "labels": self.labels, "owners": self.owners, "graphs": self.graphs,
                "generated_at": self.generated_at, "chain_head": self.chain_head}  # fmt: skip


# ---- gathering ------------------------------------------------------------------------------------------------


def gather(db: Database, incident_id: str) -> Facts:
    with db.read() as conn:
        inc = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == incident_id)).mappings().first()
        if inc is None:
            raise UnknownIncident(f"no incident {incident_id!r}")
        alerts = [dict(r) for r in conn.execute(select(ALERTS).where(ALERTS.c.incident_id == incident_id)
                                                 .order_by(ALERTS.c.starts_at, ALERTS.c.received_at)).mappings()]  # fmt: skip
        runs = [dict(r) for r in conn.execute(select(RUNS).where(RUNS.c.incident_id == incident_id)
                                               .order_by(RUNS.c.created_at)).mappings()]  # fmt: skip
        run_ids = [r["id"] for r in runs]
        steps = [dict(r) for r in conn.execute(select(STEPS).where(STEPS.c.run_id.in_(run_ids))
                                                .order_by(STEPS.c.id)).mappings()] if run_ids else []  # fmt: skip
        approvals = {(a["run_id"], a["step_id"]): dict(a) for a in conn.execute(
            select(APPROVALS).where(APPROVALS.c.run_id.in_(run_ids))).mappings()} if run_ids else {}  # fmt: skip
        for a in approvals.values():
            a["votes"] = [dict(v) for v in conn.execute(select(VOTES).where(VOTES.c.approval_id == a["id"])
                                                         .order_by(VOTES.c.at, VOTES.c.id)).mappings()]  # fmt: skip
        images = [dict(r) for r in conn.execute(select(ARTIFACTS).where(ARTIFACTS.c.run_id.in_(run_ids),
                                                                        ARTIFACTS.c.content_type.like("image/%"))
                                                 .order_by(ARTIFACTS.c.id)).mappings()] if run_ids else []  # fmt: skip
        specs = _specs(conn, {r["runbook_version_id"] for r in runs})
    events = [e for batch in iter_batches(db, ExportFilter(incident_id=incident_id), chain_head(db)[0]) for e in batch]
    incident = dict(inc)
    for r in runs:
        spec = specs.get(r["runbook_version_id"])
        r["owner"] = spec.owner if spec else None
        r["params"] = mask_sensitive(r.get("params") or {})
    views = _step_views(runs, steps, approvals, images, specs)
    times = _times(incident, alerts, views)
    return Facts(
        incident=incident,
        alerts=[_alert(a) for a in alerts],
        runs=runs,
        steps=views,
        timeline=_timeline(incident, alerts, events),
        refused=_refused(runs, approvals, events),
        times=times,
        durations=_durations(times),
        services=_services(incident, alerts),
        labels=dict(sorted((incident.get("labels") or {}).items())),
        owners=sorted({str(r["owner"]) for r in runs if r.get("owner")}),
        generated_at=utcnow(),
        chain_head=chain_head(db),
    )


def _specs(conn: Any, version_ids: set[int]) -> dict[int, Runbook]:
    out: dict[int, Runbook] = {}
    if not version_ids:
        return out
    for row in conn.execute(select(VERSIONS).where(VERSIONS.c.id.in_(version_ids))).mappings():
        book, _ = parse_source(row["source"], row["source_path"], None)
        if book is not None:
            out[row["id"]] = book.spec
    return out


def _alert(a: dict[str, Any]) -> dict[str, Any]:
    ann = a.get("annotations") or {}
    return {**a, "summary": ann.get("summary") or ann.get("description") or "",
            "severity": (a.get("labels") or {}).get("severity") or "",
            "links": alert_links(a.get("extras"), a.get("generator_url"))}  # fmt: skip


def _services(incident: dict[str, Any], alerts: list[dict[str, Any]]) -> list[str]:
    found: set[str] = set()
    for labels in [incident.get("labels") or {}] + [a.get("labels") or {} for a in alerts]:
        for key in ("service", "app", "application", "job", "component"):
            if labels.get(key):
                found.add(str(labels[key]))
                break
    return sorted(found)


# ---- steps ----------------------------------------------------------------------------------------------------


def _kind(step_type: str) -> StepKind | None:
    spec = available_types().get(step_type)
    if spec is None:
        return None
    module, _, attr = spec.partition(":")
    try:
        kind = getattr(importlib.import_module(module), attr).kind
    except Exception:  # a plugin that no longer imports still gets a postmortem
        return None
    return kind if isinstance(kind, StepKind) else None


def role_of(sid: str, step_type: str, spec: StepSpec | None, idempotent: bool, approved: bool) -> str:
    """Diagnostic or remediation, judged from the runbook and the journal (needs no plugin settings)."""
    if sid.endswith("__verify"):
        return "verification"
    if approved or (spec is not None and (spec.approval is not None or spec.risk == "high")):
        return "remediation"
    kind = _kind(step_type)
    if kind is StepKind.CONTROL:
        return "control"
    if kind is StepKind.REMEDIATION and not idempotent:
        return "remediation"
    if kind is None and not idempotent:
        return "remediation"
    return "diagnostic"


def _text(value: Any, limit: int = OUTPUT_CHARS) -> str:
    if not value:
        return ""
    text = json.dumps(mask_sensitive(value), sort_keys=True, ensure_ascii=False, default=str, indent=1)
    return text if len(text) <= limit else text[:limit] + " …"


def _approval(a: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None:
        return None
    votes = [{"user_id": v["user_id"], "name": who_voted(v["user_id"], v["user_name"], v.get("on_behalf_of")),
              "on_behalf_of": v.get("on_behalf_of"), "decision": v["decision"],
              "reason": v["reason"] or "", "at": v["at"]} for v in a["votes"]]  # fmt: skip
    return {"status": a["status"], "min_approvals": a["min_approvals"], "requested_at": a["requested_at"],
            "decided_at": a["decided_at"], "decided_by": a["decided_by"], "reason": a.get("reason") or "",
            "votes": votes, "approvers": [v["name"] for v in votes if v["decision"] == "approve"],
            "deniers": [v["name"] for v in votes if v["decision"] == "deny"]}  # fmt: skip


def _step_views(runs: list[dict[str, Any]], steps: list[dict[str, Any]],
                approvals: dict[tuple[str, str], dict[str, Any]], images: list[dict[str, Any]],
                specs: dict[int, Runbook]) -> list[StepView]:  # fmt: skip
    by_run = {r["id"]: r for r in runs}
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    attempts: dict[tuple[str, str], int] = {}
    for st in steps:  # ordered by id: the last attempt wins
        key = (st["run_id"], st["step_id"])
        latest[key] = st
        attempts[key] = attempts.get(key, 0) + 1
    keys = set(latest) | set(approvals)
    views: dict[tuple[str, str], StepView] = {}
    for key in keys:
        run = by_run[key[0]]
        spec_book = specs.get(run["runbook_version_id"])
        spec = spec_book.step(key[1]) if spec_book else None
        st = latest.get(key) or {}
        appr = approvals.get(key)
        step_type = st.get("step_type") or (spec.type if spec else "") or (appr or {}).get("policy", {}).get("step_type", "")
        views[key] = StepView(
            run_id=key[0], runbook=run["runbook_name"], step_id=key[1],
            name=(spec.name if spec and spec.name else key[1]), type=step_type,
            role=role_of(key[1], step_type, spec, bool(st.get("idempotent", True)), appr is not None),
            status=st.get("status") or (f"not run ({appr['status']})" if appr else "not run"),
            attempts=attempts.get(key, 0), started_at=st.get("started_at"), finished_at=st.get("finished_at"),
            summary=st.get("summary") or "", error=st.get("error") or "", output=_text(st.get("output")),
            params=_text((st.get("inputs") or {}).get("params") or (appr or {}).get("policy", {}).get("params")),
            approval=_approval(appr),
        )  # fmt: skip
    for img in images:
        v = views.get((img["run_id"], img["step_id"]))
        if v is not None:
            v.graphs.append(Graph(img["id"], img["name"], img["content_type"], img["data"]))
    for (run_id, sid), v in views.items():
        if sid.endswith("__verify") and (run_id, sid[: -len("__verify")]) in views:
            views[(run_id, sid[: -len("__verify")])].verification = v
    order = {(st["run_id"], st["step_id"]): i for i, st in enumerate(steps)}
    return sorted(views.values(), key=lambda v: (order.get((v.run_id, v.step_id), 1 << 30), v.run_id, v.step_id))


# ---- times ------------------------------------------------------------------------------------------------


def _min(values: list[datetime | None]) -> datetime | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _times(incident: dict[str, Any], alerts: list[dict[str, Any]], steps: list[StepView]) -> dict[str, datetime | None]:
    start = _min([a["starts_at"] for a in alerts]) or incident["opened_at"]
    detected = _min([a["received_at"] for a in alerts] + [incident["opened_at"]])
    first_diag = _min([s.finished_at for s in steps if s.role == "diagnostic" and s.status == "succeeded"])
    mitigations = []
    for s in steps:
        if s.role == "remediation" and s.status == "succeeded":
            v = s.verification
            mitigations.append(v.finished_at if v is not None and v.status == "succeeded" else s.finished_at)
    resolved = incident.get("resolved_at")
    if resolved is None and alerts and all(a["status"] == "resolved" and a["ends_at"] for a in alerts):
        resolved = max(a["ends_at"] for a in alerts)
    return {"start": start, "detected": detected, "first_diagnostic": first_diag, "mitigated": _min(mitigations),
            "resolved": resolved}  # fmt: skip


def span(a: datetime | None, b: datetime | None) -> str:
    if a is None or b is None:
        return "—"
    secs = (b - a).total_seconds()
    return format_duration(secs) if secs >= 0 else f"-{format_duration(-secs)}"


def _durations(t: dict[str, datetime | None]) -> dict[str, str]:
    return {"time_to_detect": span(t["start"], t["detected"]),
            "time_to_first_diagnostic": span(t["detected"], t["first_diagnostic"]),
            "time_to_mitigate": span(t["start"], t["mitigated"]),
            "time_to_resolve": span(t["start"], t["resolved"])}  # fmt: skip


# ---- timeline ---------------------------------------------------------------------------------------------------


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _labels(labels: dict[str, Any]) -> str:
    keep = {k: v for k, v in labels.items() if k not in ("alertname",)}
    return ", ".join(f"{k}={v}" for k, v in sorted(keep.items()))


def _timeline(incident: dict[str, Any], alerts: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[Entry]:
    out: list[Entry] = []
    for a in alerts:
        out.append(Entry(a["starts_at"], "alert", f"alert {a['alertname'] or '?'} started firing ({_labels(a.get('labels') or {})})"))
        if a["received_at"] and a["received_at"] != a["starts_at"]:
            out.append(Entry(a["received_at"], "alert", f"alert {a['alertname'] or '?'} received by runbot"))
        if a["status"] == "resolved" and a["ends_at"]:
            out.append(Entry(a["ends_at"], "alert", f"alert {a['alertname'] or '?'} resolved"))
    logged = {e["action"] for e in events}
    if "incident.opened" not in logged:
        out.append(Entry(incident["opened_at"], "incident", f"incident opened: {incident.get('title') or incident['id']}"))
    if incident.get("resolved_at") and "incident.resolved" not in logged:
        out.append(Entry(incident["resolved_at"], "incident", "incident resolved"))
    for e in events:
        entry = _event_entry(e)
        if entry is not None:
            out.append(entry)
    return sorted(out, key=lambda e: (e.at, e.seq))


def _who(d: dict[str, Any], actor: str) -> str:
    who = str(d.get("user_name") or d.get("user_id") or actor)
    return who + (f" for {d['on_behalf_of']}" if d.get("on_behalf_of") else "")


def _event_entry(e: dict[str, Any]) -> Entry | None:
    action, d, step = e["action"], e.get("details") or {}, e.get("step_id") or ""
    if action in QUIET_ACTIONS:
        return None
    reason = str(mask_sensitive(d.get("reason") or d.get("error") or "", "reason"))
    texts = {
        "run.created": f"run {e['run_id']} of runbook {e.get('runbook')} created by {e['actor']}",
        "run.finished": f"run {e['run_id']} {e.get('outcome')}" + (f": {reason}" if reason else ""),
        "step.succeeded": f"step {step} succeeded" + (f": {d['summary']}" if d.get("summary") else ""),
        "step.failed": f"step {step} failed: {reason}",
        "step.skipped": f"step {step} skipped: {reason}",
        "step.held": f"step {step} held back: {reason}",
        "step.in_doubt": f"step {step} is in doubt (its worker stopped mid-step)",
        "step.decided": f"{e['actor']} decided {e.get('outcome')} for in-doubt step {step}",
        "approval.requested": f"approval requested for {step} (needs {d.get('min_approvals', 1)}"
                              + (f"; approvers {', '.join(map(str, d['approvers']))})" if d.get("approvers") else ")"),
        "approval.vote": f"{_who(d, e['actor'])} voted {d.get('decision')} on {step} ({d.get('approvals')}/{d.get('needed')})",
        "approval.approved": f"{step} approved by {_who(d, e['actor'])} ({d.get('approvals')}/{d.get('needed')})",
        "approval.denied": f"{step} denied by {_who(d, e['actor'])}" + (f": {reason}" if reason else ""),
        "approval.refused": f"{_who(d, e['actor'])} was refused a {d.get('decision')} vote on {step}"
                            + (f": {reason}" if reason else ""),
        "approval.expired": f"approval for {step} expired (on_timeout: {d.get('on_timeout')})",
        "approval.escalated": f"approval for {step} escalated",
    }  # fmt: skip
    text = texts.get(action) or f"{action} {step}".strip() + (f" → {e['outcome']}" if e.get("outcome") else "") + (
        f": {reason}" if reason else "")
    source = "decision" if action.startswith("approval.") or action == "step.decided" else action.split(".", 1)[0]
    failure = action in ("step.failed", "approval.denied", "approval.expired", "step.in_doubt", "step.held") or (
        action == "run.finished" and e.get("outcome") not in ("succeeded",)) or action.endswith((".refused", ".throttled"))
    return Entry(_ts(e["ts"]), source, text, e["actor"], failure, e["seq"])


def _refused(runs: list[dict[str, Any]], approvals: dict[tuple[str, str], dict[str, Any]],
             events: list[dict[str, Any]]) -> list[Entry]:  # fmt: skip
    out: list[Entry] = []
    for a in approvals.values():
        if a["status"] in ("denied", "expired", "cancelled"):
            who = f" by {a['decided_by']}" if a.get("decided_by") else ""
            why = f": {a['reason']}" if a.get("reason") else ""
            out.append(Entry(a["decided_at"] or a["requested_at"], "approval",
                             f"{a['step_id']} (run {a['run_id']}) {a['status']}{who}{why}", failure=True))  # fmt: skip
    for r in runs:
        if r["status"] in ("skipped", "aborted", "cancelled"):
            out.append(Entry(r["finished_at"] or r["updated_at"], "run",
                             f"run {r['id']} ({r['runbook_name']}) {r['status']}: {r.get('reason') or ''}".rstrip(": "),
                             failure=True))  # fmt: skip
    for e in events:
        if e["action"] in REFUSAL_ACTIONS or e["action"].endswith((".refused", ".throttled")):
            d = e.get("details") or {}
            what = e.get("step_id") or e.get("run_id") or e.get("runbook") or ""
            reason = str(d.get("reason") or e.get("outcome") or "")
            out.append(Entry(_ts(e["ts"]), e["action"].split(".", 1)[0], f"{e['action']} {what}: {reason}".strip(),
                             e["actor"], True, e["seq"]))  # fmt: skip
    return sorted(out, key=lambda x: (x.at, x.seq))
