"""Sandboxed Jinja2 for runbook templates, with `secret()` as an opaque reference.

`secret('kv/path#key')` renders to a placeholder, never the value. Rendered parameters (what is stored,
shown in Slack and audited) therefore hold only placeholders; `resolve_secrets` swaps in real values at
the last moment before a plugin runs and registers them with the run's redactor.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, Template, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError

from runbot.redaction import MASK, Redactor
from runbot.runbooks.sandbox import (
    DEFAULT_LIMITS,
    INLINE_LIMITS,
    KEY_LIMITS,
    BoundedSandbox,
    TemplateBudgetExceeded,
    TemplateFailure,
    TemplateLimits,
    TemplateTimeout,
    budget,
    current,
    make_globals,
    weight,
)

__all__ = ["DEFAULT_LIMITS", "INLINE_LIMITS", "KEY_LIMITS", "TemplateBudgetExceeded", "TemplateFailure",
           "TemplateLimits", "TemplateTimeout", "render", "render_async"]  # fmt: skip

# What `alert` holds in a template (engine scope and intake's template_alert); lint refuses other names.
# Grafana alerts add theirs (adapters/alertmanager/payload.GRAFANA_ALERT_FIELDS and orgId).
ALERT_FIELDS = frozenset({"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint",
                          "dashboardURL", "panelURL", "silenceURL", "imageURL", "values", "valueString", "orgId"})
SCOPE_NAMES = frozenset({"alert", "incident", "params", "steps", "run", "secret", "now"})
_PLACEHOLDER = re.compile(r"⟦secret:([^⟧|]+)\|([0-9a-f]{20})⟧")
_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)
_SECRET_REF = re.compile(r"^[A-Za-z0-9_./@+:-]+(#[A-Za-z0-9_.-]+)?$")


# Placeholders carry a MAC under a per-process key, so text that merely *looks* like a placeholder (from an
# alert label, a parameter or an HTTP response echoed into a later step) can never pull a secret out.
_PLACEHOLDER_KEY = os.urandom(32)


def _mac(ref: str) -> str:
    return hmac.new(_PLACEHOLDER_KEY, ref.encode(), hashlib.sha256).hexdigest()[:20]


ENCODINGS: dict[str, Callable[[str], str]] = {
    "url": lambda v: urllib.parse.quote(v, safe=""),
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "json": lambda v: json.dumps(v)[1:-1],
}


def secret_placeholder(ref: str, encoding: str | None = None) -> str:
    """The opaque stand-in for a secret; only runbot-made ones (valid MAC) are ever resolved.

    `encoding` (url, base64, json) is applied to the value at resolution time, since a template filter
    would only ever see the placeholder: `?token={{ secret('kv/x#t', 'url') }}`.
    """
    if not isinstance(ref, str) or not _SECRET_REF.match(ref):
        raise TemplateFailure(f"secret() takes a reference like 'kv/path#key', got {ref!r}")
    if encoding is not None:
        if encoding not in ENCODINGS:
            raise TemplateFailure(f"secret() encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        ref = f"{ref}~{encoding}"
    return f"⟦secret:{ref}|{_mac(ref)}⟧"


def _now() -> datetime:
    return datetime.now(UTC)


def _make_env() -> BoundedSandbox:
    env = BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals = make_globals(secret_placeholder, _now)
    return env


ENV = _make_env()


@functools.lru_cache(maxsize=4096)
def _template(text: str) -> Template:
    """Compiled once per distinct text: runbooks render the same templates for every run."""
    return ENV.from_string(text)


@functools.lru_cache(maxsize=4096)
def _expression(expr: str) -> Any:
    return ENV.compile_expression(expr, undefined_to_none=False)


class AttrDict(dict[str, Any]):
    """A dict whose keys also read as attributes in templates (steps.x.value); missing keys are errors."""


def render(value: Any, scope: Mapping[str, Any], limits: TemplateLimits = DEFAULT_LIMITS) -> Any:
    """Render every template string inside value (dicts, lists, strings); a lone `{{ expr }}` keeps its type.

    The whole value shares one budget (`limits`): time, output size and loop iterations.
    """
    with budget(limits):
        return _render(value, scope)


async def render_async(value: Any, scope: Mapping[str, Any], inline: TemplateLimits = INLINE_LIMITS,
                       full: TemplateLimits = DEFAULT_LIMITS) -> Any:
    """For the engine's event loop: render inline with a small time budget, and only a template that needs
    more time is rendered again in a render process (runbooks/render_pool.py, with the full budget), so it
    blocks neither the loop nor, through the GIL, the web server."""
    try:
        return render(value, scope, inline)
    except TemplateTimeout:
        from runbot.runbooks.render_pool import POOL

        return await POOL.render(value, scope, full)


def _render(value: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return render_string(value, scope)
    if isinstance(value, dict):
        return {k: _render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, scope) for v in value]
    return value


def render_string(text: str, scope: Mapping[str, Any]) -> Any:
    if "{{" not in text and "{%" not in text:
        return text
    try:
        m = _SINGLE_EXPR.match(text)
        if m and "{{" not in m.group("expr") and "}}" not in m.group("expr"):
            result = _expression(m.group("expr").strip())(**scope)
            if isinstance(result, Undefined):
                str(result)  # StrictUndefined raises here with the name that was missing
            _check_result(result)
            return result
        out: list[str] = []
        for chunk in _template(text).generate(**scope):
            out.append(chunk)
        return "".join(out)
    except TemplateFailure:
        raise
    except RecursionError:
        raise TemplateBudgetExceeded("the template recursed too deeply (a macro that calls itself?)") from None
    except MemoryError:
        raise TemplateBudgetExceeded("the template ran out of memory; simplify it") from None
    except UndefinedError as exc:
        raise TemplateFailure(f"undefined value: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateFailure(f"refused by the template sandbox: {exc}") from None
    except TemplateSyntaxError as exc:
        raise TemplateFailure(f"template syntax error: {exc.message}") from None
    except TemplateError as exc:
        raise TemplateFailure(f"template error: {exc}") from None
    except Exception as exc:  # arithmetic on wrong types, comparisons of None, ...
        raise TemplateFailure(f"{type(exc).__name__}: {exc}") from None


def _check_result(result: Any) -> None:
    b = current()
    b.size(weight(result, b.limits.chars), "the template's value")


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "off", "none")
    return bool(value)


def secret_refs(value: Any) -> list[str]:
    """Secret references inside rendered parameters (paths only), for approvals and audit."""
    found: list[str] = []
    if isinstance(value, str):
        found.extend(m.group(1) for m in _PLACEHOLDER.finditer(value))
    elif isinstance(value, dict):
        for v in value.values():
            found.extend(secret_refs(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(secret_refs(v))
    return sorted(set(found))


def mask_placeholders(value: Any) -> Any:
    """For display: replace placeholders with ****(path)."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: f"{MASK}({m.group(1)})", value)
    if isinstance(value, dict):
        return {k: mask_placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_placeholders(v) for v in value]
    return value


def resolve_secrets(value: Any, fetch: Callable[[str], str], redactor: Redactor) -> Any:
    """Swap placeholders for real values (fetching each once) and register every value for redaction."""
    cache: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        ref = m.group(1)
        if not hmac.compare_digest(m.group(2), _mac(ref)):
            raise TemplateFailure(
                f"refusing to resolve secret reference {ref!r}: it was not made by this runbot process "
                "(it came from data such as an alert label, a parameter or a step output)")  # fmt: skip
        if ref not in cache:
            base, _, encoding = ref.partition("~")
            secret = fetch(base)
            redactor.register(secret)
            if encoding:
                secret = ENCODINGS[encoding](secret)
                redactor.register(secret)
            cache[ref] = secret
        return cache[ref]

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return _PLACEHOLDER.sub(sub, v) if "⟦secret:" in v else v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


# ---- static analysis for lint -------------------------------------------------------------------------

LINT_LIMITS = DEFAULT_LIMITS.with_seconds(0.25)
_TRIAL_ENV = BoundedSandbox(undefined=ChainableUndefined, autoescape=False, keep_trailing_newline=False)
_TRIAL_ENV.globals = make_globals(secret_placeholder, _now)


def trial_budget_problem(text: str) -> str | None:
    """Lint's look at what a template costs: render it once with every variable undefined (loops over data
    run zero times, so only what the template builds by itself counts); a template that exceeds its budget
    even so is a bomb whatever the alert, and lint names it."""
    if not isinstance(text, str) or ("{{" not in text and "{%" not in text):
        return None
    try:
        with budget(LINT_LIMITS):
            for _ in _TRIAL_ENV.from_string(text).generate():
                pass
    except TemplateBudgetExceeded as exc:
        return str(exc)
    except RecursionError:
        return "the template recursed too deeply (a macro that calls itself?)"
    except Exception:  # noqa: S110 - undefined values, type errors: the real data decides, not lint
        pass
    return None


class TemplateRefs:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.steps: set[str] = set()
        self.params: set[str] = set()
        self.alert_fields: set[str] = set()
        self.secrets: list[str] = []


def analyze(text: str) -> TemplateRefs:
    """Names, steps.<id>, params.<name> and literal secret() refs a template uses; raises on syntax errors."""
    refs = TemplateRefs()
    if not isinstance(text, str) or ("{{" not in text and "{%" not in text):
        return refs
    try:
        ast = ENV.parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateFailure(f"template syntax error: {exc.message}") from None
    from jinja2 import meta

    refs.names = set(meta.find_undeclared_variables(ast))
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        base = getattr(node, "node", None)
        if isinstance(base, nodes.Name) and base.name == "alert" and isinstance(node, nodes.Getattr):
            refs.alert_fields.add(node.attr)
        if isinstance(base, nodes.Name) and base.name in ("steps", "params"):
            key: str | None = None
            if isinstance(node, nodes.Getattr):
                key = node.attr
            elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                key = node.arg.value
            if key is not None:
                (refs.steps if base.name == "steps" else refs.params).add(key)
    for call in ast.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name == "secret" and call.args and isinstance(call.args[0], nodes.Const):
            refs.secrets.append(str(call.args[0].value))
    return refs


def iter_strings(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    out: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, str):
        out.append((path, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.extend(iter_strings(v, (*path, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(iter_strings(v, (*path, i)))
    return out
