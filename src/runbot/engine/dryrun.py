"""Dry run: render every step with its parameters, approvals and checks; execute nothing."""

from __future__ import annotations

import json
from typing import Any

from runbot.engine.approvals import ApprovalRequest, PolicyConfig
from runbot.engine.runner import EMPTY_ALERT
from runbot.runbooks.loader import LoadedRunbook
from runbot.runbooks.model import StepSpec
from runbot.runbooks.templating import (
    TemplateBudgetExceeded,
    TemplateFailure,
    analyze,
    iter_strings,
    mask_placeholders,
    render,
    secret_refs,
)
from runbot.steps.registry import StepRegistry

ERROR_MARK = "TEMPLATE ERROR: "


def _needs_earlier_steps(value: Any) -> bool:
    """A template reading steps.<id> cannot render in a dry run (nothing ran): that is not an error."""
    try:
        return any(analyze(text).steps for _, text in iter_strings(value))
    except TemplateFailure:
        return False


def _show(value: Any, scope: dict[str, Any]) -> str:
    try:
        rendered = render(value, scope)
    except TemplateBudgetExceeded as exc:
        return f"{ERROR_MARK}{exc}"
    except TemplateFailure as exc:
        if _needs_earlier_steps(value) and "undefined" in str(exc):
            return f"(decided at run time: {exc})"
        return f"{ERROR_MARK}{exc}"
    text = json.dumps(mask_placeholders(rendered), sort_keys=True, default=str)
    refs = secret_refs(rendered)
    return text + (f"  secrets: {', '.join(refs)}" if refs else "")


def errors(lines: list[str]) -> int:
    """How many of a plan's lines show a template that fails with this alert and these parameters."""
    return sum(ERROR_MARK in line for line in lines)


def plan(book: LoadedRunbook, alert: dict[str, Any] | None, params: dict[str, Any], registry: StepRegistry,
         cfg: PolicyConfig | None = None) -> list[str]:  # fmt: skip
    """Every approver kind is shown as the policy sees it: groups, users, label -> groups (or nobody), cli users."""
    scope = {"alert": alert or EMPTY_ALERT, "incident": {}, "params": params, "steps": {},
             "run": {"id": "(dry-run)", "runbook": book.name, "requester": "(dry-run)", "manual": True}}  # fmt: skip
    lines: list[str] = []

    def one(step: StepSpec, indent: str) -> None:
        kind = registry.get(step.type).kind.value if registry.has(step.type) else "?"
        head = f"{indent}- {step.sid} [{step.type}, {kind}{', risk ' + step.risk if step.risk else ''}]"
        lines.append(head + (f": {step.name}" if step.name else ""))
        if step.when is not None:
            lines.append(f"{indent}    when: {step.when}  -> {_show(step.when, scope)}")
        lines.append(f"{indent}    with: {_show(step.with_, scope)}")
        if step.approval:
            a = step.approval
            req = ApprovalRequest.from_spec(a, (alert or {}).get("labels"))
            who = req.describe(cfg or PolicyConfig())
            lines.append(f"{indent}    approval: {a.min_approvals} of {', '.join(who) or '(nobody: no approvers)'}; "
                         f"timeout {a.timeout:g}s then {a.on_timeout}; self-approval "
                         f"{'allowed' if a.allow_self_approval else 'refused'}")  # fmt: skip
        if step.retry:
            lines.append(f"{indent}    retry: {step.retry.attempts} attempts, backoff {step.retry.initial:g}s..{step.retry.max:g}s")
        if step.verify:
            lines.append(f"{indent}    verify: {step.verify.type} within {step.verify.within:g}s: {_show(step.verify.with_, scope)}")
        for comp in step.on_failure:
            lines.append(f"{indent}    on_failure:")
            one(comp, indent + "      ")
        scope["steps"][step.sid] = {}

    for s in book.spec.steps:
        one(s, "")
    return lines
