"""Modals (deny with a reason, start a run with parameters) and the App Home tab."""

from __future__ import annotations

import json
from typing import Any

from runbot.adapters.slack import budget as Z
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
PARAM_INDEX = "param#"  # a parameter whose name is too long for a block_id goes by its position
CHOICE_INDEX = "#"  # a choice whose JSON is too long for an option value goes by its position (JSON never starts so)
HOME_PAGE_ACTION = "runbot_home_page"
HOME_PAGE = 15  # pending approvals per App Home page (2 blocks each; a Home view holds 100)


def deny_modal(approval_id: str, step_id: str, origin: dict[str, Any]) -> dict[str, Any]:
    """`origin` (channel, response_url) travels in private_metadata so the outcome reaches the clicker."""
    return Z.fit_view({
        "type": "modal", "callback_id": DENY_VIEW,
        "private_metadata": _metadata({"approval_id": approval_id, **origin}),
        "title": plain("Deny step", 24), "submit": plain("Deny", 24), "close": plain("Cancel", 24),
        "blocks": [
            section(f"Deny {E.code(step_id, 80)}? The step will not run."),
            {"type": "input", "block_id": REASON_BLOCK, "optional": True, "label": plain("Reason"),
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                         "max_length": 1000}},
        ],
    })  # fmt: skip


def _metadata(meta: dict[str, Any]) -> str:
    """private_metadata within Slack's 3000 characters: a response_url too long to carry is left out
    (the answer then goes to the channel), never cut into an unusable half."""
    text = json.dumps(meta)
    if len(text) > Z.PRIVATE_METADATA:
        text = json.dumps({k: v for k, v in meta.items() if k != "response_url"})
    if len(text) > Z.PRIVATE_METADATA:
        text = json.dumps({k: v for k, v in meta.items() if k in ("approval_id", "runbook", "channel")
                           and len(str(v)) < 900})  # fmt: skip
    return text


def run_modal(book: LoadedRunbook, origin: dict[str, Any]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [section(f"Start {E.code(book.name)}: {E.esc_fit(book.spec.description or '', 2500)}")]
    for i, (name, spec) in enumerate(list(book.spec.params.items())[:40]):
        label = plain(f"{name} ({spec.type})" + ("" if spec.required else " — optional"), 2000)
        element: dict[str, Any]
        if spec.choices:
            choices = list(dict.fromkeys(json.dumps(c) for c in spec.choices))[: Z.OPTIONS]
            options = [{"text": plain(str(json.loads(c)), Z.OPTION_TEXT),
                        "value": c if len(c) <= Z.OPTION_VALUE else f"{CHOICE_INDEX}{j}"}
                       for j, c in enumerate(choices)]  # fmt: skip
            element = {"type": "static_select", "action_id": "value", "options": options}
            if spec.default is not None and json.dumps(spec.default) in choices:
                element["initial_option"] = options[choices.index(json.dumps(spec.default))]
        else:
            element = {"type": "plain_text_input", "action_id": "value"}
            if spec.default is not None:
                element["initial_value"] = str(spec.default)
        block_id = PARAM_PREFIX + name if len(PARAM_PREFIX + name) <= Z.ID_MAX else f"{PARAM_INDEX}{i}"
        block: dict[str, Any] = {"type": "input", "block_id": block_id, "label": label,
                                 "optional": not spec.required, "element": element}  # fmt: skip
        if spec.description:
            block["hint"] = plain(spec.description, 2000)
        blocks.append(block)
    return Z.fit_view({"type": "modal", "callback_id": RUN_VIEW, "title": plain("Start a run", 24),
                       "submit": plain("Start", 24), "close": plain("Cancel", 24),
                       "private_metadata": _metadata({"runbook": book.name, **origin}), "blocks": blocks})  # fmt: skip


def submitted_params(view: dict[str, Any], book: LoadedRunbook | None = None) -> dict[str, Any]:
    """Values typed into the run modal; empty optional fields are left out (defaults apply). Parameters
    and choices sent by position (too long for Slack's ids and values) are looked up in `book`."""
    out: dict[str, Any] = {}
    specs = list(book.spec.params.items()) if book is not None else []
    for block_id, actions in (view.get("state", {}).get("values") or {}).items():
        if block_id.startswith(PARAM_PREFIX):
            name = block_id[len(PARAM_PREFIX):]
        elif block_id.startswith(PARAM_INDEX) and block_id[len(PARAM_INDEX):].isdigit():
            idx = int(block_id[len(PARAM_INDEX):])
            if idx >= len(specs):
                continue
            name = specs[idx][0]
        else:
            continue
        v = actions.get("value") or {}
        if v.get("selected_option"):
            out[name] = _choice(str(v["selected_option"]["value"]), dict(specs).get(name))
        elif v.get("value") not in (None, ""):
            out[name] = v["value"]
    return out


def _choice(value: str, spec: Any) -> Any:
    if value.startswith(CHOICE_INDEX):
        choices = list(dict.fromkeys(json.dumps(c) for c in (getattr(spec, "choices", None) or [])))
        idx = value[len(CHOICE_INDEX):]
        if not idx.isdigit() or int(idx) >= len(choices):
            raise ValueError("that choice is no longer offered; open the form again")
        return json.loads(choices[int(idx)])
    return json.loads(value)


def submitted_reason(view: dict[str, Any]) -> str:
    values = view.get("state", {}).get("values") or {}
    return str(((values.get(REASON_BLOCK) or {}).get(REASON_INPUT) or {}).get("value") or "").strip()


def home_view(pending: list[tuple[dict[str, Any], dict[str, Any]]], runs: list[dict[str, Any]],
              frozen: dict[str, Any] | None, note: str | None = None, page: int = 0,
              cmd: str = "/runbot") -> dict[str, Any]:  # fmt: skip
    """Pending approvals this person may decide (with buttons, a page at a time: every one is reachable)
    and the most recent runs, within the Home view's 100 blocks."""
    pages = max(1, -(-len(pending) // HOME_PAGE))
    page = min(max(0, page), pages - 1)
    shown = pending[page * HOME_PAGE:(page + 1) * HOME_PAGE]
    blocks: list[dict[str, Any]] = [header("runbot")]
    if note:
        blocks.append(section(note))
    if frozen:
        blocks.append(section(f":ice_cube: *Remediations are frozen* by {E.esc(frozen.get('by'))}: "
                              f"{E.esc(frozen.get('reason') or 'no reason given')}"))  # fmt: skip
    blocks.append(section(f"*Waiting for your approval* ({len(pending)})"))
    if not pending:
        blocks.append(context("Nothing is waiting for you."))
    for appr, run in shown:
        policy = appr.get("policy") or {}
        blocks.append(section(f":lock: {E.code(policy.get('step_name') or appr['step_id'], 80)} in "
                              f"{E.code(run['runbook_name'])} run {E.code(run['id'])} · expires "
                              f"{E.date(appr['expires_at'])}"))  # fmt: skip
        blocks.append({"type": "actions", "block_id": f"runbot_home:{appr['id']}", "elements": [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": appr["id"],
             "text": plain("Approve")},
            {"type": "button", "action_id": DENY_ACTION, "style": "danger", "value": appr["id"], "text": plain("Deny")},
        ]})  # fmt: skip
    if len(pending) > len(shown):
        blocks.append(context(f"Showing {page * HOME_PAGE + 1}–{page * HOME_PAGE + len(shown)} of {len(pending)} "
                              f"(page {page + 1} of {pages}). Also: `{cmd} approve RUN [STEP]`, `{cmd} status`."))  # fmt: skip
        nav = []
        if page > 0:
            nav.append({"type": "button", "action_id": f"{HOME_PAGE_ACTION}:prev", "value": str(page - 1),
                        "text": plain("Previous")})  # fmt: skip
        if page < pages - 1:
            nav.append({"type": "button", "action_id": f"{HOME_PAGE_ACTION}:next", "value": str(page + 1),
                        "text": plain(f"Next ({len(pending) - (page + 1) * HOME_PAGE} more)")})  # fmt: skip
        blocks.append({"type": "actions", "block_id": "runbot_home_pages", "elements": nav})
    blocks.append({"type": "divider"})
    blocks.append(section("*Recent runs*"))
    lines = [f"{RUN_ICON.get(r['status'], '')} {E.code(r['id'])} {E.code(r['runbook_name'])} "
             f"{E.esc(r['status'])} · {E.date(r['created_at'])}" for r in runs[:20]]  # fmt: skip
    blocks.append(section("\n".join(lines) if lines else "_no runs yet_"))
    return Z.fit_view({"type": "home", "blocks": blocks})
