"""Modals (deny with a reason, start a run with parameters) and the App Home tab."""

from __future__ import annotations

import json
from typing import Any

from runbot.adapters.slack import escape as E
from runbot.adapters.slack.blocks import (
    APPROVE_ACTION,
    DENY_ACTION,
    RUN_ICON,
    context,
    header,
    plain,
    section,
)
from runbot.runbooks.loader import LoadedRunbook

DENY_VIEW = "runbot_deny_modal"
RUN_VIEW = "runbot_run_modal"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
PARAM_PREFIX = "param:"


def deny_modal(approval_id: str, step_id: str, origin: dict[str, Any]) -> dict[str, Any]:
    """`origin` (channel, response_url) travels in private_metadata so the outcome reaches the clicker."""
    return {
        "type": "modal", "callback_id": DENY_VIEW,
        "private_metadata": json.dumps({"approval_id": approval_id, **origin})[:3000],
        "title": plain("Deny step", 24), "submit": plain("Deny", 24), "close": plain("Cancel", 24),
        "blocks": [
            section(f"Deny {E.code(step_id, 80)}? The step will not run."),
            {"type": "input", "block_id": REASON_BLOCK, "optional": True, "label": plain("Reason"),
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                         "max_length": 1000}},
        ],
    }  # fmt: skip


def run_modal(book: LoadedRunbook, origin: dict[str, Any]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [section(f"Start {E.code(book.name)}: {E.esc(book.spec.description or '')}")]
    for name, spec in list(book.spec.params.items())[:40]:
        label = plain(f"{name} ({spec.type})" + ("" if spec.required else " — optional"), 2000)
        element: dict[str, Any]
        if spec.choices:
            options = [{"text": plain(str(c)), "value": json.dumps(c)[:150]} for c in spec.choices[:100]]
            element = {"type": "static_select", "action_id": "value", "options": options}
            if spec.default is not None and spec.default in spec.choices:
                element["initial_option"] = options[spec.choices.index(spec.default)]
        else:
            element = {"type": "plain_text_input", "action_id": "value"}
            if spec.default is not None:
                element["initial_value"] = str(spec.default)
        block: dict[str, Any] = {"type": "input", "block_id": PARAM_PREFIX + name, "label": label,
                                 "optional": not spec.required, "element": element}  # fmt: skip
        if spec.description:
            block["hint"] = plain(spec.description, 2000)
        blocks.append(block)
    return {"type": "modal", "callback_id": RUN_VIEW, "title": plain("Start a run", 24),
            "submit": plain("Start", 24), "close": plain("Cancel", 24),
            "private_metadata": json.dumps({"runbook": book.name, **origin})[:3000], "blocks": blocks}  # fmt: skip


def submitted_params(view: dict[str, Any]) -> dict[str, Any]:
    """Values typed into the run modal; empty optional fields are left out (defaults apply)."""
    out: dict[str, Any] = {}
    for block_id, actions in (view.get("state", {}).get("values") or {}).items():
        if not block_id.startswith(PARAM_PREFIX):
            continue
        v = actions.get("value") or {}
        if v.get("selected_option"):
            out[block_id[len(PARAM_PREFIX):]] = json.loads(v["selected_option"]["value"])
        elif v.get("value") not in (None, ""):
            out[block_id[len(PARAM_PREFIX):]] = v["value"]
    return out


def submitted_reason(view: dict[str, Any]) -> str:
    values = view.get("state", {}).get("values") or {}
    return str(((values.get(REASON_BLOCK) or {}).get(REASON_INPUT) or {}).get("value") or "").strip()


def home_view(pending: list[tuple[dict[str, Any], dict[str, Any]]], runs: list[dict[str, Any]],
              frozen: dict[str, Any] | None, note: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Pending approvals this person may decide (with buttons) and the most recent runs."""
    blocks: list[dict[str, Any]] = [header("runbot")]
    if note:
        blocks.append(section(note))
    if frozen:
        blocks.append(section(f":ice_cube: *Remediations are frozen* by {E.esc(frozen.get('by'))}: "
                              f"{E.esc(frozen.get('reason') or 'no reason given')}"))  # fmt: skip
    blocks.append(section(f"*Waiting for your approval* ({len(pending)})"))
    if not pending:
        blocks.append(context("Nothing is waiting for you."))
    for appr, run in pending[:15]:
        policy = appr.get("policy") or {}
        blocks.append(section(f":lock: {E.code(policy.get('step_name') or appr['step_id'], 80)} in "
                              f"{E.code(run['runbook_name'])} run {E.code(run['id'])} · expires "
                              f"{E.date(appr['expires_at'])}"))  # fmt: skip
        blocks.append({"type": "actions", "block_id": f"runbot_home:{appr['id']}", "elements": [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": appr["id"],
             "text": plain("Approve")},
            {"type": "button", "action_id": DENY_ACTION, "style": "danger", "value": appr["id"], "text": plain("Deny")},
        ]})  # fmt: skip
    blocks.append({"type": "divider"})
    blocks.append(section("*Recent runs*"))
    lines = [f"{RUN_ICON.get(r['status'], '')} {E.code(r['id'])} {E.code(r['runbook_name'])} "
             f"{E.esc(r['status'])} · {E.date(r['created_at'])}" for r in runs[:20]]  # fmt: skip
    blocks.append(section("\n".join(lines) if lines else "_no runs yet_"))
    return {"type": "home", "blocks": blocks[:100]}
