"""A Jinja2 sandbox with a budget: time, size and loop limits for every template a runbook renders.

Jinja2's own sandbox stops a template from reaching Python internals, but not from burning CPU or memory:
`{% for a in x %}{% for b in x %}...`, `"x" * 10**9`, `s ~ s` repeated, `'x'|center(10**9)`, a macro that
calls itself twice. Runbook templates are rendered by the engine for every step (and by intake for
concurrency keys), so one careless or hostile runbook could stall every other run. Here every render runs
under a `Budget`, and every operation that can grow time or memory checks it *before* it allocates:

- loops: each `{% for %}` iterates through a counting wrapper (a total per render), and `range()` is capped;
- calls, attribute and item access, filters and binary operators tick a clock checked every few ticks;
- `*`, `**`, `%`, `+`, `~`, `join`, `replace`, width-taking string methods and filters, and `format` are
  refused when their result would be larger than the budget allows, before it is computed;
- everything a template outputs (`{{ }}`, literal text inside loops and macros) is counted per render.

A render that runs out raises `TemplateBudgetExceeded` (a `TemplateFailure`): the step fails with a
message that says which limit and how to fix the template. The check is cooperative, so a runaway render
stops at its next operation; nothing else in the process has to be interrupted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import wraps
from typing import Any, cast

from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer


class TemplateFailure(ValueError):
    """A template could not be rendered; the message says why without showing secret values."""


class TemplateBudgetExceeded(TemplateFailure):
    """A render used more time, memory or loop iterations than its budget allows."""


class TemplateTimeout(TemplateBudgetExceeded):
    """A render ran longer than its time budget (the only limit worth retrying with a larger budget)."""


@dataclass(frozen=True)
class TemplateLimits:
    """What one render may use. The defaults are far above what a runbook template needs."""

    seconds: float = 2.0
    chars: int = 4_000_000  # characters of any one value, and of everything one render outputs
    iterations: int = 100_000  # loop iterations, all loops of one render together
    range_items: int = 10_000  # items in one range()
    exponent_bits: int = 4096  # bits of the result of `**`

    def with_seconds(self, seconds: float) -> TemplateLimits:
        return replace(self, seconds=seconds)


DEFAULT_LIMITS = TemplateLimits()
# The engine first renders on its event loop with this budget, and only when that runs out of time renders
# again in a worker thread with DEFAULT_LIMITS, so the common (microsecond) case costs no thread hop.
INLINE_LIMITS = DEFAULT_LIMITS.with_seconds(0.05)
# Concurrency keys are rendered by intake inside its transaction: they must be trivial.
KEY_LIMITS = DEFAULT_LIMITS.with_seconds(0.01)

_HINT = "simplify the template (see the runbook reference: template limits)"


class Budget:
    __slots__ = ("deadline", "iterations", "limits", "output", "ticks")

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.ticks = 0
        self.iterations = 0
        self.output = 0

    def tick(self) -> None:
        self.ticks += 1
        if not self.ticks & 31 and time.monotonic() > self.deadline:
            raise TemplateTimeout(f"the template ran longer than {self.limits.seconds:g} s; {_HINT}")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.iterations:
            raise TemplateBudgetExceeded(
                f"the template's loops ran more than {self.limits.iterations:,} iterations; {_HINT}")
        self.tick()

    def size(self, n: int, what: str) -> None:
        if n > self.limits.chars:
            raise TemplateBudgetExceeded(
                f"{what} would be {n:,} characters, more than the limit of {self.limits.chars:,}; {_HINT}")

    def emit(self, n: int) -> None:
        self.output += n
        if self.output > self.limits.chars:
            raise TemplateBudgetExceeded(
                f"the template's output is more than {self.limits.chars:,} characters; {_HINT}")


_CURRENT: ContextVar[Budget | None] = ContextVar("runbot_template_budget", default=None)


def current() -> Budget:
    """The budget of the render in progress; outside a render (compile-time folding) a fresh default one."""
    budget = _CURRENT.get()
    return budget if budget is not None else Budget(DEFAULT_LIMITS)


@contextmanager
def budget(limits: TemplateLimits) -> Iterator[Budget]:
    b = Budget(limits)
    token = _CURRENT.set(b)
    try:
        yield b
    finally:
        _CURRENT.reset(token)


def weight(value: Any, cap: int) -> int:
    """About how many characters `value` becomes when shown; stops counting once past `cap` (so it is cheap)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, range):
            total += 16
        else:
            total += 8
        if total > cap:
            return total
    return total


def _length(value: Any) -> int | None:
    if isinstance(value, str | bytes | bytearray | list | tuple | dict | set | frozenset | range):
        return len(value)
    return None


# ---- checks before an operation allocates ---------------------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z]")
_FORMAT_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_MAX_WIDTH = 100_000


def _check_format_string(fmt: str) -> None:
    """Refuse widths and precisions that would build huge strings (`%999999999s`, `{:>999999999}`, `%*s`)."""
    widths: list[str] = []
    for m in _PERCENT_SPEC.finditer(fmt.replace("%%", "")):
        widths += [w for w in m.groups() if w]
    for m in _FORMAT_SPEC.finditer(fmt.replace("{{", "").replace("}}", "")):
        widths += re.findall(r"\d+", m.group(1))
    if "{" in "".join(m.group(1) for m in re.finditer(r"\{[^{}]*?:([^}]*\{)", fmt)):
        widths.append("*")  # a width taken from an argument: {:{}}
    for w in widths:
        if w == "*" or int(w) > _MAX_WIDTH:
            raise TemplateBudgetExceeded(
                f"format string asks for a width or precision above {_MAX_WIDTH:,} (or from an argument); {_HINT}")


def _check_binop(b: Budget, operator: str, left: Any, right: Any) -> None:
    cap = b.limits.chars
    if operator == "*":
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        size = _length(seq)
        if size is not None and isinstance(n, int) and not isinstance(n, bool):
            b.size(size * max(n, 0), "a repeated string or list")
    elif operator == "**":
        big = isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
        if big and right * max(abs(left).bit_length(), 1) > b.limits.exponent_bits:
            raise TemplateBudgetExceeded(f"{left} ** {right} is too large a number; {_HINT}")
    elif operator == "+":
        ls, rs = _length(left), _length(right)
        if ls is not None and rs is not None:
            b.size(ls + rs, "a concatenation")
    elif operator == "%" and isinstance(left, str):
        _check_format_string(left)
        b.size(len(left) + weight(right, cap), "a formatted string")


_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _check_call(b: Budget, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    cap = b.limits.chars
    name = getattr(obj, "__name__", "")
    owner = getattr(obj, "__self__", None)
    wrapped = getattr(obj, "__wrapped__", None)  # the sandbox's str.format wrapper
    if wrapped is not None and name in ("format", "format_map") and isinstance(getattr(wrapped, "__self__", None), str):
        _check_format_string(wrapped.__self__)
        b.size(len(wrapped.__self__) + weight((args, kwargs), cap), "a formatted string")
        return
    if isinstance(owner, str):
        if name in _WIDTH_METHODS:
            width = args[0] if args else kwargs.get("width", kwargs.get("tabsize", 0))
            if isinstance(width, int):
                b.size(width * (8 if name == "expandtabs" else 1) + len(owner), f"str.{name}()")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = owner.count(args[0]) if args[0] else len(owner) + 1
            b.size(len(owner) + count * max(len(args[1]) - len(args[0]), 0), "str.replace()")
        elif name == "join" and args:
            b.size(weight(args[0], cap) + len(owner) * (_length(args[0]) or 0), "str.join()")
    if name == "fromkeys" and args and _length(args[0]) is not None:
        b.size(_length(args[0]) or 0, "dict.fromkeys()")


def _bounded_range(*args: int) -> range:
    r = range(*args)
    limit = current().limits.range_items
    if len(r) > limit:
        raise TemplateBudgetExceeded(f"range() of {len(r):,} items is more than the limit of {limit:,}; {_HINT}")
    return r


def bounded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every `{% for %}` iterates through this (the AST is rewritten so), counting against the budget."""
    b = current()
    for item in iterable:
        b.iterate()
        yield item


def bounded_concat(*parts: Any) -> str:
    """The `~` operator (Jinja joins the parts' str()), with its result size checked before it is built."""
    b = current()
    total = 0
    for part in parts:
        total += len(part) if isinstance(part, str) else weight(part, b.limits.chars)
        b.size(total, "a `~` concatenation")
    b.tick()
    return "".join(part if isinstance(part, str) else str(part) for part in parts)


def literal(text: str) -> str:
    """Literal template text inside loops and macros, counted against the output budget."""
    current().emit(len(text))
    return text


# Filters whose integer arguments are counts of things to build (slice(n) makes n lists).
_COUNT_FILTERS = frozenset({"slice", "batch"})
# Filters whose result size follows from their arguments' sizes: checked before they run.
_SIZED_FILTERS = frozenset({"join", "string", "tojson", "pprint", "format", "replace", "urlencode", "xmlattr"})


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter: arguments and result are checked against the budget of the render in progress."""
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context/environment comes first

    @wraps(func)  # keeps jinja_pass_arg, so context/environment-taking filters still get theirs
    def checked(*args: Any, **kwargs: Any) -> Any:
        b = current()
        b.tick()
        cap = b.limits.chars
        values = list(args[skip:])
        for extra in (*values[1:], *kwargs.values()):
            if isinstance(extra, int) and not isinstance(extra, bool):
                limit = b.limits.range_items if name in _COUNT_FILTERS else cap
                if abs(extra) > limit:
                    raise TemplateBudgetExceeded(f"|{name} argument {extra:,} is above the limit of {limit:,}; {_HINT}")
        if values and name in _SIZED_FILTERS:
            if name == "join" and _length(values[0]) is None and not isinstance(values[0], str):
                values[0] = [item for item in bounded_iter(values[0])]  # a generator: count what it yields first
                args = (*args[:skip], *values)
            if name == "format" and isinstance(values[0], str):
                _check_format_string(values[0])
            size = weight(values, cap)
            if name == "join":
                sep = values[1] if len(values) > 1 else kwargs.get("d", "")
                size += len(str(sep)) * (_length(values[0]) or 0)
            elif name == "replace" and len(values) >= 3 and isinstance(values[0], str):
                old, new = str(values[1]), str(values[2])
                count = values[0].count(old) if old else len(values[0]) + 1
                size = len(values[0]) + count * max(len(new) - len(old), 0)
            b.size(size, f"the result of |{name}")
        result = func(*args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            b.size(weight(result, cap), f"the result of |{name}")
        return result

    return checked


def _call(function: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    """A call to one of this module's functions; ImportedName cannot be written in template source."""
    return nodes.Call(nodes.ImportedName(f"{__name__}.{function}", lineno=lineno), args, [], None, None, lineno=lineno)


class _Bounder(NodeTransformer):
    """Rewrites a parsed template so loops, `~` and literal text in loops and macros go through the budget."""

    def __init__(self) -> None:
        self.depth = 0  # > 0 inside a loop or macro body

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.depth += 1
        loop = cast(nodes.For, self.generic_visit(node))
        self.depth -= 1
        loop.iter = _call("bounded_iter", [cast(nodes.Expr, loop.iter)], loop.lineno)
        return loop

    def visit_Macro(self, node: nodes.Macro) -> nodes.Node:
        self.depth += 1
        out = self.generic_visit(node)
        self.depth -= 1
        return out

    visit_CallBlock = visit_Macro

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        concat = cast(nodes.Concat, self.generic_visit(node))
        return _call("bounded_concat", list(concat.nodes), concat.lineno)

    def visit_TemplateData(self, node: nodes.TemplateData) -> nodes.Node:
        if not self.depth:
            return node
        return _call("literal", [nodes.Const(node.data, lineno=node.lineno)], node.lineno)


def _finalize(value: Any) -> Any:
    """Every `{{ }}` output: counted, and refused before a huge value is turned into text."""
    b = current()
    n = weight(value, b.limits.chars)
    b.size(n, "an output value")
    b.emit(n)
    return value


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, plus the budget checks above."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(finalize=_finalize, **kwargs)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:  # fmt: skip
        rewritten = _Bounder().visit(source)
        rewritten.set_environment(self)
        return super()._generate(rewritten, name, filename, defer_init=defer_init)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        b = current()
        b.tick()
        _check_binop(b, operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        b = current()
        b.tick()
        _check_call(b, __obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        current().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        current().tick()
        return super().getitem(obj, argument)


def make_globals(secret: Callable[..., str], now: Callable[[], Any]) -> dict[str, Any]:
    return {"secret": secret, "now": now, "range": _bounded_range, "dict": dict}
