"""Block Kit builders for run messages: pure functions from a RunView to text + blocks.

Every untrusted string (labels, annotations, outputs, errors, reasons) passes through `escape`; parameters
come from the masked copies the engine stores, so secret values never reach a message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from runbot.adapters.slack import budget as Z
from runbot.adapters.slack import escape as E
from runbot.adapters.slack.budget import fit
from runbot.adapters.slack.runview import RunView, StepLine

APPROVE_ACTION = "runbot_approve"
DENY_ACTION = "runbot_deny"
SECTION_LIMIT = 2900  # Slack allows 3000 characters per section text
MAX_STEP_SECTIONS = 12
STEP_LIST_BUDGET = 5000  # the step list's share of a root message's ~10k characters of block text
STEP_LINES_MAX = 30  # more than this and the list collapses (first, last, and what needs attention)
LABELS_BUDGET = 1000
FIELD_BUDGET = 250
ATTENTION = ("running", "approval", "waiting", "failed", "in_doubt", "held")

RUN_ICON = {
    "pending": ":hourglass:", "running": ":arrow_forward:", "waiting": ":double_vertical_bar:",
    "succeeded": ":white_check_mark:", "failed": ":x:", "cancelled": ":heavy_multiplication_x:",
    "aborted": ":no_entry:", "skipped": ":fast_forward:",
}  # fmt: skip
STEP_ICON = {
    "pending": ":white_circle:", "running": ":hourglass_flowing_sand:", "succeeded": ":white_check_mark:",
    "failed": ":x:", "skipped": ":fast_forward:", "waiting": ":double_vertical_bar:", "in_doubt": ":warning:",
    "cancelled": ":heavy_multiplication_x:", "approval": ":lock:", "held": ":ice_cube:",
}  # fmt: skip
SEVERITY_ICON = {"critical": ":red_circle:", "error": ":red_circle:", "page": ":red_circle:",
                 "warning": ":large_orange_circle:", "major": ":large_orange_circle:",
                 "info": ":large_blue_circle:"}  # fmt: skip


@dataclass
class Message:
    text: str  # notification fallback (escaped mrkdwn)
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # the last word on size: whatever the builders made, Slack gets what it accepts
        self.text = Z.fit_top_text(self.text)
        self.blocks = Z.fit_blocks(self.blocks)

    def digest(self) -> str:
        body = json.dumps({"text": self.text, "blocks": self.blocks}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()[:32]


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": mrkdwn(fit(text, SECTION_LIMIT) or "-")}


def context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [mrkdwn(fit(t, SECTION_LIMIT)) for t in texts if t][:10]}


def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": fit(text, Z.HEADER_TEXT) or "-", "emoji": True}}


def plain(text: str, limit: int = 75) -> dict[str, Any]:
    return {"type": "plain_text", "text": fit(text, limit) or "-", "emoji": True}


DIVIDER: dict[str, Any] = {"type": "divider"}


# ---- the incident message (thread root) ---------------------------------------------------------------------


def title_of(view: RunView) -> str:
    alertname = view.labels.get("alertname")
    name = view.book.name if view.book is not None else view.run["runbook_name"]
    return f"{alertname} — {name}" if alertname else name


def incident_message(view: RunView, runbook_url: str | None = None) -> Message:
    """The thread root: alert summary, severity, labels, links and the live step list. `runbook_url` links
    the runbook's source (see routing.runbook_url)."""
    run = view.run
    status = run["status"]
    sev = str(view.labels.get("severity") or "")
    head = f"{SEVERITY_ICON.get(sev.lower(), ':white_circle:')} {fit(_plain_untrusted(title_of(view)), 140)}"
    runbook = E.code(run["runbook_name"])
    if view.book is not None:
        src = _runbook_link(view, runbook_url)
        runbook += f" v{view.book.short_version[:8]}" + (f" · {src}" if src else "")
    fields = [
        f"*Status*\n{RUN_ICON.get(status, '')} {E.esc(status)}",
        f"*Severity*\n{E.esc_fit(sev, 100) if sev else '-'}",
        f"*Runbook*\n{runbook}",
        f"*Run*\n{E.code(run['id'])} · by {_actor(run['requester'])}",
    ]
    if view.book is not None and view.book.spec.owner:
        fields.append(f"*Owner*\n{E.esc_fit(view.book.spec.owner, 200)}")
    if view.incident:
        fields.append(f"*Incident*\n{E.code(view.incident['id'])} ({E.esc(view.incident['status'])})")
    blocks: list[dict[str, Any]] = [
        header(head),
        {"type": "section", "fields": [mrkdwn(fit(f, FIELD_BUDGET)) for f in fields]},
    ]
    summary = view.annotations.get("summary") or view.annotations.get("description")
    if summary:
        blocks.append(section(E.esc_fit(E.clip(str(summary), 4000), 1200)))
    elif view.book is not None and view.book.spec.description:
        blocks.append(section(E.esc_fit(view.book.spec.description, 1200)))
    if run.get("reason") and status in ("waiting", "failed", "aborted", "cancelled", "skipped"):
        blocks.append(context(f"_{E.esc_fit(E.clip(run['reason'], 1000), 500)}_"))
    if view.labels:
        blocks.append(context(labels_line(view.labels, view.id)))
    links = _links(view, runbook_url)
    if links:
        blocks.append(context(fit(" · ".join(links), 1200)))
    blocks.append(DIVIDER)
    blocks.extend(step_sections(view.steps, view.id))
    if view.frozen and status not in ("succeeded", "failed", "cancelled", "aborted", "skipped"):
        blocks.append(context(f":ice_cube: Remediations are frozen by {E.esc(view.frozen.get('by'))}: "
                              f"{E.esc(view.frozen.get('reason') or 'no reason given')}"))  # fmt: skip
    text = f"{RUN_ICON.get(status, '')} [{E.esc(status)}] {E.esc_fit(E.clip(title_of(view), 400), 400)}"
    if summary:
        text += f": {E.one_line(summary, 200)}"
    return Message(text, blocks)


def labels_line(labels: dict[str, Any], run_id: str) -> str:
    """`k`=`v` pairs within LABELS_BUDGET; the rest are counted, with where to see them all."""
    parts: list[str] = []
    used = 0
    items = sorted(labels.items())
    for i, (k, v) in enumerate(items):
        part = f"{E.code(k, 60)}={E.code(v, 200)}"
        if used + len(part) + 3 > LABELS_BUDGET - 80:
            parts.append(f"_… {len(items) - i} more label(s): `runbot runs show {E.esc(run_id)}`_")
            break
        parts.append(part)
        used += len(part) + 3
    return " · ".join(parts)


def step_sections(steps: list[StepLine], run_id: str = "") -> list[dict[str, Any]]:
    lines = collapsed_lines(steps, run_id) if steps else ["_no steps_"]
    chunks: list[str] = []
    cur = ""
    for line in lines:
        if cur and len(cur) + len(line) + 1 > SECTION_LIMIT:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n{line}" if cur else line
    chunks.append(cur)
    if len(chunks) > MAX_STEP_SECTIONS:
        chunks = [*chunks[: MAX_STEP_SECTIONS - 1], f"_… {len(chunks) - MAX_STEP_SECTIONS + 1} more section(s)_"]
    return [section(c) for c in chunks]


def collapsed_lines(steps: list[StepLine], run_id: str) -> list[str]:
    """Every step's line if they fit; else the first and last steps, every step that needs attention
    (running, waiting, failed ...), and "… N more" where steps were left out, with where to see them all."""
    lines = [step_line(s) for s in steps]
    if len(lines) <= STEP_LINES_MAX and sum(len(x) + 1 for x in lines) <= STEP_LIST_BUDGET:
        return lines
    n = len(lines)
    order = [i for i, s in enumerate(steps) if s.status in ATTENTION]
    order += [0, 1, 2, n - 1, n - 2, n - 3]
    order += [i for i in range(n - 1, -1, -1) if steps[i].status != "pending"]  # the latest finished ones
    order += list(range(n))
    keep: set[int] = set()
    used = 200  # room for the "… N more" markers and the pointer
    for i in dict.fromkeys(x for x in order if 0 <= x < n):
        if len(keep) >= STEP_LINES_MAX or used + len(lines[i]) + 30 > STEP_LIST_BUDGET:
            break
        keep.add(i)
        used += len(lines[i]) + 30
    out: list[str] = []
    gap = 0
    for i in range(n):
        if i in keep:
            if gap:
                out.append(f"_… {gap} more step(s)_")
                gap = 0
            out.append(lines[i])
        else:
            gap += 1
    if gap:
        out.append(f"_… {gap} more step(s)_")
    where = f"`runbot runs show {E.esc(run_id)}` or `/runbot status {E.esc(run_id)}`" if run_id else "the thread"
    out.append(f"_{len(keep)} of {n} steps shown; all of them: {where}_")
    return out


def step_line(s: StepLine) -> str:
    return fit(_step_line(s), 400)


def _step_line(s: StepLine) -> str:
    indent = "      " * s.depth + ("↳ " if s.depth else "")
    line = f"{indent}{STEP_ICON.get(s.status, ':grey_question:')} *{E.esc_fit(E.clip(s.title, 80), 120)}* {E.code(s.type, 40)}"
    if s.status == "succeeded" and s.summary:
        line += f" — {E.one_line(s.summary, 160)}"
    elif s.status == "failed":
        line += f" — {E.one_line(s.error or 'failed', 200)}"
        if s.retry_at is not None:
            line += f" (retry at {E.date(s.retry_at, '{time_secs}')})"
    elif s.status == "skipped":
        line += f" — skipped: {E.one_line(s.error or '', 120)}"
    elif s.status == "approval":
        line += " — waiting for approval"
    elif s.status == "held":
        line += f" — held: {E.one_line(s.summary or '', 160)}"
    elif s.status in ("waiting", "in_doubt", "cancelled") and (s.summary or s.error):
        line += f" — {E.one_line(s.summary or s.error, 160)}"
    elif s.status == "running":
        line += " — running"
    return line


def _links(view: RunView, runbook_url: str | None) -> list[str]:
    out = []
    if view.alert.get("generatorURL"):
        out.append(E.link(view.alert["generatorURL"], "Alert source"))
    for key, label in (("runbook_url", "Runbook doc"), ("dashboard", "Dashboard"), ("dashboard_url", "Dashboard")):
        if view.annotations.get(key):
            out.append(E.link(view.annotations[key], label))
    return out


def _runbook_link(view: RunView, url: str | None) -> str | None:
    return E.link(url, "source") if url and view.book is not None else None


def _plain_untrusted(text: str) -> str:
    """For plain_text fields (no mrkdwn parsing): only masking is needed."""
    return E.redact(text)


def _actor(ref: str | None) -> str:
    ref = ref or "system"
    if ref.startswith("slack:"):
        return E.user(ref)
    return E.esc_fit(ref, 200)


# ---- thread replies ----------------------------------------------------------------------------------------------


def step_result_reply(view: RunView, step_id: str, attempt: int, show_output: bool) -> Message | None:
    rec = view.attempt_row(step_id, attempt)
    if rec is None:
        return None
    line = next((s for s in view.steps if s.step_id == step_id), None)
    title = line.title if line else step_id
    status = rec["status"]
    icon = STEP_ICON.get(status, ":grey_question:")
    head = f"{icon} *{E.esc_fit(E.clip(title, 200), 200)}* {E.code(rec['step_type'], 40)}"
    blocks: list[dict[str, Any]]
    if status == "succeeded":
        text = head + (f" succeeded: {E.one_line(rec.get('summary'), 300)}" if rec.get("summary") else " succeeded")
        blocks = [section(text)]
        output = rec.get("output")
        if show_output and output:
            body = json.dumps(output, indent=1, sort_keys=True, ensure_ascii=False, default=str)
            blocks.append(section(E.code_block(body, 1500)))
    elif status == "failed":
        text = head + f" failed (attempt {attempt}): {E.esc_fit(E.clip(rec.get('error') or 'failed', 3000), 1500)}"
        if rec.get("retry_at") is not None:
            text += f"\n:repeat: retrying at {E.date(rec['retry_at'], '{time_secs}')}"
        blocks = [section(text)]
    else:
        return None
    return Message(fit(text, 300), blocks)


def notice(text: str) -> Message:
    return Message(fit(text, 300), [section(text)])


def held_reply(step_id: str, reason: str) -> Message:
    return notice(f":ice_cube: Step {E.code(step_id)} is held: {E.esc_fit(E.clip(reason, 2000), 1500)}. Diagnostics continue; "
                  "it starts once remediations are unfrozen.")  # fmt: skip


def in_doubt_reply(run_id: str, step_id: str, message: str) -> Message:
    return notice(f":warning: Step {E.code(step_id)} is *in doubt*: {E.esc_fit(E.clip(message, 2000), 1200)}\n"
                  f"Decide on the host: `runbot runs decide {run_id} {step_id} retry|skip|abort`")  # fmt: skip


def finished_reply(view: RunView) -> Message:
    status = view.run["status"]
    reason = view.run.get("reason") or ""
    return notice(f"{RUN_ICON.get(status, '')} Run {E.code(view.id)} finished: *{E.esc(status)}*"
                  + (f" — {E.esc_fit(E.clip(reason, 2000), 1000)}" if reason else ""))  # fmt: skip


def freeze_notice(frozen: bool, actor: str, reason: str) -> Message:
    who = _actor(actor)
    if frozen:
        return notice(f":ice_cube: *Remediations are frozen* by {who}: {E.esc_fit(reason or 'no reason given', 1500)}. "
                      "No remediation step starts until `unfreeze`; diagnostics continue.")  # fmt: skip
    return notice(f":sunny: *Remediations are unfrozen* by {who}. Held steps start now.")


# ---- approvals ------------------------------------------------------------------------------------------------


def approval_message(view: RunView, appr: dict[str, Any], who: str, *, escalation_ping: str | None = None) -> Message:
    """What will run, with which (masked) parameters, who may approve; buttons only while pending."""
    policy = appr.get("policy") or {}
    step_name = policy.get("step_name") or appr["step_id"]
    params = policy.get("params") or {}
    blocks: list[dict[str, Any]] = []
    if escalation_ping is not None:
        blocks.append(section(f":rotating_light: *Escalated:* this approval was not decided in time. {escalation_ping}"))
    blocks.append(section(
        f":lock: *Approval needed* to run {E.code(step_name, 80)} ({E.code(policy.get('step_type') or '?', 40)}) "
        f"in run {E.code(view.id)} of {E.code(view.run['runbook_name'])}"))  # fmt: skip
    blocks.append(section("*Parameters* (secrets masked)\n" + E.code_block(
        json.dumps(params, indent=1, sort_keys=True, ensure_ascii=False, default=str), 2000)))  # fmt: skip
    targets = targets_of(params)
    facts = []
    if targets:
        facts.append(fit("*Targets:* " + ", ".join(E.code(t, 200) for t in targets), 1200))
    if policy.get("secrets"):
        facts.append(fit("*Uses secrets:* " + ", ".join(E.code(s, 120) for s in policy["secrets"]), 1000)
                     + " (values never shown)")  # fmt: skip
    if facts:
        blocks.append(section("\n".join(facts)))
    needed = int(appr.get("min_approvals") or 1)
    rules = [f"*Who may approve:* {fit(who, 1200)}",
             f"needs {needed} approval{'s from distinct people' if needed > 1 else ''}",
             f"requested by {_actor(appr.get('requester'))}"
             + ("" if policy.get("allow_self_approval") or (appr.get("requester") or "system") == "system"
                else " (who may not approve it)"),
             f"expires {E.date(appr['expires_at'])}"]  # fmt: skip
    blocks.append(context(fit(" · ".join(rules), 2000)))
    votes = appr.get("votes") or []
    if votes:
        blocks.append(context(fit("Votes: " + ", ".join(
            f"{':white_check_mark:' if v['decision'] == 'approve' else ':no_entry:'} {_voter(v)} {E.date(v['at'], '{time}')}"
            for v in votes), 1500)))  # fmt: skip
    status = appr["status"]
    if status == "pending" and view.run["status"] not in ("succeeded", "failed", "cancelled", "aborted", "skipped"):
        blocks.append({"type": "actions", "block_id": f"runbot_approval:{appr['id']}", "elements": [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": appr["id"],
             "text": plain("Approve"),
             "confirm": {"title": plain("Run this step?"), "text": mrkdwn(f"Run {E.code(step_name, 80)} now?"),
                         "confirm": plain("Approve"), "deny": plain("Cancel")}},
            {"type": "button", "action_id": DENY_ACTION, "style": "danger", "value": appr["id"],
             "text": plain("Deny")},
        ]})  # fmt: skip
        text = f":lock: Approval needed: {E.esc_fit(E.clip(step_name, 200), 200)} in run {E.esc(view.id)}"
    else:
        outcome = decision_line(appr)
        blocks.append(section(outcome))
        text = outcome
    return Message(fit(text, 300), blocks)


def decision_line(appr: dict[str, Any]) -> str:
    status = appr["status"]
    by = E.esc_fit(appr.get("decided_by") or "", 200)
    when = E.date(appr.get("decided_at"))
    reason = f": {E.esc_fit(E.clip(appr['reason'], 1000), 500)}" if appr.get("reason") else ""
    if status == "approved":
        return f":white_check_mark: *Approved* by {by} at {when}"
    if status == "denied":
        return f":no_entry: *Denied* by {by} at {when}{reason}"
    if status == "expired":
        return f":alarm_clock: *Expired* at {when}: nobody decided in time"
    if status == "cancelled":
        return f":heavy_multiplication_x: *Cancelled* at {when}{reason}"
    return f"*{E.esc(status)}*"


def approval_fallback(view: RunView, appr: dict[str, Any], cmd: str = "/runbot") -> Message:
    """The minimal approval request, tried when Slack refused the full one: plain text, no blocks, and the
    command that decides it (nobody may miss that an approval is waiting)."""
    step = E.code((appr.get("policy") or {}).get("step_name") or appr["step_id"], 80)
    return Message(f":lock: Approval needed: {step} in run {E.code(view.id)} ({E.code(view.run['runbook_name'], 80)}). "
                   f"Decide with `{cmd} approve {view.id} {E.esc_fit(appr['step_id'], 80)}` or "
                   f"`{cmd} deny {view.id}`, or in the App Home. (The full request could not be shown.)", [])  # fmt: skip


def _voter(v: dict[str, Any]) -> str:
    uid = str(v.get("user_id") or "")
    return E.user(uid) if uid.startswith("slack:") else E.esc_fit(v.get("user_name") or uid, 80)


TARGET_KEYS = ("url", "host", "hosts", "target", "targets", "service", "namespace", "deployment", "instance", "cluster")


def targets_of(params: dict[str, Any]) -> list[str]:
    """The parameters that name what a step acts on (url, host, service ...), for the approver's eye."""
    out: list[str] = []
    for k in TARGET_KEYS:
        v = params.get(k)
        if isinstance(v, list):
            out.extend(str(x) for x in v[:10])
        elif v not in (None, ""):
            out.append(f"{k}={v}" if k not in ("url", "host") else str(v))
    return out


# ---- storm: one message for an incident's many runs -------------------------------------------------------------

SUMMARY_RUNS = 15


def incident_summary(incident: dict[str, Any], runs: list[dict[str, Any]], pending: int,
                     threaded: int) -> Message:  # fmt: skip
    """The message of an incident with more runs than get a thread each: counts by status, the latest runs,
    and what needs people (approval requests are posted in this message's thread)."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    title = str(incident.get("title") or incident["id"])
    sev = str(incident.get("severity") or "")
    blocks: list[dict[str, Any]] = [
        header(f"{SEVERITY_ICON.get(sev.lower(), ':white_circle:')} {fit(E.redact(title), 120)}"),
        section(f"*Incident* {E.code(incident['id'])} ({E.esc(incident.get('status') or 'open')}) · "
                f"*{len(runs)} runs*: " + ", ".join(f"{RUN_ICON.get(k, '')} {n} {E.esc(k)}"
                                                   for k, n in sorted(counts.items()))),
    ]  # fmt: skip
    if pending:
        blocks.append(section(f":lock: *{pending} approval request(s) waiting*, in this thread and the App Home"))
    lines = [f"{RUN_ICON.get(r['status'], '')} {E.code(r['id'])} {E.code(r['runbook_name'], 60)} {E.esc(r['status'])}"
             for r in runs[-SUMMARY_RUNS:]]  # fmt: skip
    if len(runs) > SUMMARY_RUNS:
        lines.insert(0, f"_… {len(runs) - SUMMARY_RUNS} earlier run(s)_")
    blocks.append(section("\n".join(lines)))
    blocks.append(context(f"The first {threaded} runs have a thread each; the others are summarised here so "
                          f"Slack's limits go to what people must act on. One run: `/runbot status RUN` or "
                          f"`runbot runs show RUN`."))  # fmt: skip
    done = sum(n for k, n in counts.items() if k in ("succeeded", "failed", "cancelled", "aborted", "skipped"))
    text = f"Incident {E.esc(incident['id'])}: {len(runs)} runs, {done} finished" + (
        f", {pending} waiting for approval" if pending else "")
    return Message(text, blocks)
