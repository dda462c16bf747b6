"""Sandboxed Jinja2 for runbook templates, with `secret()` as an opaque reference.

`secret('kv/path#key')` renders to a placeholder, never the value. Rendered parameters (what is stored,
shown in Slack and audited) therefore hold only placeholders; `resolve_secrets` swaps in real values at
the last moment before a plugin runs and registers them with the run's redactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runbot.redaction import MASK, Redactor

# What `alert` holds in a template (engine scope and intake's template_alert); lint refuses other names.
ALERT_FIELDS = frozenset({"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"})
SCOPE_NAMES = frozenset({"alert", "incident", "params", "steps", "run", "secret", "now"})
_PLACEHOLDER = re.compile(r"⟦secret:([^⟧|]+)\|([0-9a-f]{20})⟧")
_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)
_SECRET_REF = re.compile(r"^[A-Za-z0-9_./@+:-]+(#[A-Za-z0-9_.-]+)?$")


class TemplateFailure(ValueError):
    """A template could not be rendered; the message says why without showing secret values."""


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


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals = {"secret": secret_placeholder, "now": _now, "range": range, "dict": dict}
    return env


ENV = _make_env()


class AttrDict(dict[str, Any]):
    """A dict whose keys also read as attributes in templates (steps.x.value); missing keys are errors."""


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every template string inside value (dicts, lists, strings); a lone `{{ expr }}` keeps its type."""
    if isinstance(value, str):
        return render_string(value, scope)
    if isinstance(value, dict):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    return value


def render_string(text: str, scope: Mapping[str, Any]) -> Any:
    if "{{" not in text and "{%" not in text:
        return text
    try:
        m = _SINGLE_EXPR.match(text)
        if m and "{{" not in m.group("expr") and "}}" not in m.group("expr"):
            result = ENV.compile_expression(m.group("expr").strip(), undefined_to_none=False)(**scope)
            if isinstance(result, Undefined):
                str(result)  # StrictUndefined raises here with the name that was missing
            return result
        return ENV.from_string(text).render(**scope)
    except UndefinedError as exc:
        raise TemplateFailure(f"undefined value: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateFailure(f"refused by the template sandbox: {exc}") from None
    except TemplateSyntaxError as exc:
        raise TemplateFailure(f"template syntax error: {exc.message}") from None
    except TemplateError as exc:
        raise TemplateFailure(f"template error: {exc}") from None
    except TemplateFailure:
        raise
    except Exception as exc:  # arithmetic on wrong types, comparisons of None, ...
        raise TemplateFailure(f"{type(exc).__name__}: {exc}") from None


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
