"""`expect` conditions over a Prometheus query result: a tiny, safe expression language (no Python eval).

Why not Python `eval` or Jinja: runbook text is reviewed but still untrusted input, and Jinja's `all()`
semantics over a list of series would need filters nobody reads fluently. Instead the text is parsed with
`ast` (Python syntax, so it reads naturally), only a short whitelist of node types is accepted, and this
module walks the tree itself. There is no attribute access beyond `series.value` / `series.labels.<name>`,
no calls beyond a few reducers, no exponentiation, and arithmetic only on numbers, so an expression cannot
reach Python internals or allocate without bound.

Names: `value` (the number when the query returned exactly one series), `series` (one entry per series),
`series.value` and `series.labels.<name>` (vectors: one item per series), `inf`, `true`/`false`.
Vectors broadcast: `series.value > 0` is a list of booleans, so a condition must reduce it with `all(...)`
or `any(...)`; leaving a vector at the top level is a compile error, since "all" or "any" would be a guess.
Functions: all, any, len, min, max, sum, abs. Operators: < <= > >= == != in, not in, and, or, not, + - * / %.
`all()` of no series is true (as in Python and PromQL's `absent` thinking): write
`len(series) > 0 and all(...)` when an empty result must fail.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MAX_LENGTH = 2000
MAX_NODES = 300

__all__ = ["Expect", "ExpectError", "ExpectEvalError", "compile_expect", "evaluate_expect"]


class ExpectError(ValueError):
    """The expression is not valid (syntax or a construct we refuse); reported by lint."""


class ExpectEvalError(ValueError):
    """The expression is valid but cannot be evaluated on this result (e.g. `value` with 3 series)."""


class Shape(Enum):
    SCALAR = "scalar"
    VECTOR = "vector"  # one item per series
    SERIES = "series"  # the `series` name itself: only len() and attributes
    LABELS = "labels"  # series.labels: only .name / ["name"]


_REDUCERS = frozenset({"all", "any", "min", "max", "sum"})
_FUNCTIONS = _REDUCERS | {"len", "abs"}
_CONSTANTS: dict[str, Any] = {"inf": math.inf, "true": True, "false": False}
_CMP: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
}
_CMP_TEXT: dict[type[ast.cmpop], str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.In: "in", ast.NotIn: "not in",
}  # fmt: skip


def _div(a: float, b: float) -> float:
    if b == 0:  # PromQL semantics rather than an exception: x/0 = ±Inf, 0/0 = NaN
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


def _mod(a: float, b: float) -> float:
    return math.nan if b == 0 else math.fmod(a, b)


_ARITH: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: _div,
    ast.Mod: _mod,
}


@dataclass(frozen=True)
class Expect:
    """A compiled, validated expression; `evaluate` is cheap and may be called many times."""

    source: str
    tree: ast.expr = field(repr=False, compare=False)
    uses_value: bool = False

    def evaluate(self, value: Any, series: Sequence[Mapping[str, Any]]) -> bool:
        return evaluate_expect(self, value, series)


def compile_expect(source: str) -> Expect:
    """Parse and check `source`; raises ExpectError with a message fit for lint output."""
    if not isinstance(source, str) or not source.strip():
        raise ExpectError("expect must be a non-empty condition, e.g. `value < 0.01`")
    text = " ".join(source.strip().splitlines())
    if len(text) > MAX_LENGTH:
        raise ExpectError(f"expect is too long ({len(text)} > {MAX_LENGTH} characters)")
    try:
        module = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        raise ExpectError(f"syntax error{col}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpectError("expression is too deeply nested or invalid") from None
    nodes = list(ast.walk(module))
    if len(nodes) > MAX_NODES:
        raise ExpectError(f"expression is too complex ({len(nodes)} nodes > {MAX_NODES})")
    checker = _Checker()
    try:
        shape = checker.check(module.body)
    except RecursionError:
        raise ExpectError("expression is too deeply nested") from None
    if shape is Shape.VECTOR:
        raise ExpectError(
            "the condition has one result per series: wrap it in all(...) or any(...), "
            "e.g. all(series.value > 0)"
        )
    if shape is not Shape.SCALAR:
        raise ExpectError(
            "`series` is a list of series: use series.value, series.labels.<name> or len(series)"
        )
    if not _is_condition(module.body):
        raise ExpectError(
            f"expect must be a condition (a comparison, and/or/not, all/any), e.g. `{text} > 0`"
        )
    return Expect(source=text, tree=module.body, uses_value=checker.uses_value)


def evaluate_expect(expect: Expect, value: Any, series: Sequence[Mapping[str, Any]]) -> bool:
    """Evaluate on a result: `value` (None unless exactly one series) and `series` [{labels, value}]."""
    ev = _Evaluator(value, series)
    result = ev.eval(expect.tree)
    if isinstance(result, list):  # cannot happen after compile's shape check, kept as a guard
        raise ExpectEvalError("the condition produced one result per series; use all(...) or any(...)")
    return bool(result)


def _is_condition(node: ast.expr) -> bool:
    if isinstance(node, ast.Compare | ast.BoolOp):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("all", "any"):
        return True
    if isinstance(node, ast.Name) and node.id in ("true", "false"):
        return True
    return isinstance(node, ast.Constant) and isinstance(node.value, bool)


def _describe(node: ast.AST) -> str:
    try:
        return f"`{ast.unparse(node)}`"
    except Exception:
        return type(node).__name__


class _Checker:
    """Whitelist and shape inference: every construct not handled here is refused."""

    def __init__(self) -> None:
        self.uses_value = False

    def check(self, node: ast.expr) -> Shape:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float | str) and node.value is not None:
                return Shape.SCALAR
            raise ExpectError(f"unsupported literal {_describe(node)}")
        if isinstance(node, ast.Name):
            if node.id == "value":
                self.uses_value = True
                return Shape.SCALAR
            if node.id == "series":
                return Shape.SERIES
            if node.id in _CONSTANTS:
                return Shape.SCALAR
            raise ExpectError(f"unknown name `{node.id}`; known: value, series, inf, true, false")
        if isinstance(node, ast.Attribute):
            base = self.check(node.value)
            if base is Shape.SERIES and node.attr in ("value", "labels"):
                return Shape.VECTOR if node.attr == "value" else Shape.LABELS
            if base is Shape.LABELS and not node.attr.startswith("__"):
                return Shape.VECTOR
            if base is Shape.SERIES:
                raise ExpectError(f"series has `value` and `labels`, not `{node.attr}`")
            raise ExpectError(f"attribute access {_describe(node)} is not allowed")
        if isinstance(node, ast.Subscript):
            base = self.check(node.value)
            key = node.slice
            if base is Shape.LABELS and isinstance(key, ast.Constant) and isinstance(key.value, str):
                return Shape.VECTOR
            raise ExpectError(f'indexing {_describe(node)} is not allowed; use series.labels["name"] only')
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.BoolOp):
            return self._merge([self.check(v) for v in node.values], node)
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
                raise ExpectError(f"operator in {_describe(node)} is not allowed")
            return self._merge([self.check(node.operand)], node)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _ARITH:
                raise ExpectError(f"operator in {_describe(node)} is not allowed (only + - * / %)")
            return self._merge([self.check(node.left), self.check(node.right)], node)
        raise ExpectError(f"{_describe(node)} is not allowed in expect")

    def _merge(self, shapes: list[Shape], node: ast.AST) -> Shape:
        for s in shapes:
            if s is Shape.SERIES:
                raise ExpectError(f"in {_describe(node)}: use series.value (or len(series)), not series")
            if s is Shape.LABELS:
                raise ExpectError(f"in {_describe(node)}: use series.labels.<name>, not series.labels")
        return Shape.VECTOR if Shape.VECTOR in shapes else Shape.SCALAR

    def _call(self, node: ast.Call) -> Shape:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise ExpectError(
                f"unknown function in {_describe(node)}; known: {', '.join(sorted(_FUNCTIONS))}"
            )
        name = node.func.id
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise ExpectError(f"{name}() takes exactly one argument")
        arg = self.check(node.args[0])
        if name == "len":
            if arg in (Shape.SERIES, Shape.VECTOR):
                return Shape.SCALAR
            raise ExpectError("len() takes series or series.value, e.g. len(series) > 0")
        if name == "abs":
            return self._merge([arg], node)
        if arg is not Shape.VECTOR:
            raise ExpectError(
                f"{name}() takes a per-series expression such as {name}(series.value > 0), got {_describe(node.args[0])}"
            )
        return Shape.SCALAR

    def _compare(self, node: ast.Compare) -> Shape:
        shapes = [self.check(node.left)]
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if len(node.ops) > 1:
                    raise ExpectError("`in` cannot be chained with other comparisons; use `and`")
                if not isinstance(right, ast.List | ast.Tuple | ast.Set) or not all(
                    isinstance(e, ast.Constant) and isinstance(e.value, int | float | str) for e in right.elts
                ):
                    raise ExpectError('`in` takes a literal list, e.g. series.labels.code in ["500", "503"]')
                continue
            if type(op) not in _CMP:
                raise ExpectError(f"operator {_CMP_TEXT.get(type(op), type(op).__name__)!r} is not allowed")
            shapes.append(self.check(right))
        return self._merge(shapes, node)


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)


class _Evaluator:
    def __init__(self, value: Any, series: Sequence[Mapping[str, Any]]) -> None:
        self.value = value
        self.series = series

    def eval(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id == "value":
                if self.value is None:
                    raise ExpectEvalError(
                        f"`value` is only defined when the query returns exactly one series; it returned "
                        f"{len(self.series)} (use all(series.value ...), any(...) or len(series))"
                    )
                return self.value
            if node.id == "series":
                return list(self.series)
            return _CONSTANTS[node.id]
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "series":
                if node.attr == "value":
                    return [s.get("value") for s in self.series]
                return [dict(s.get("labels") or {}) for s in self.series]
            return [str(lbls.get(node.attr, "")) for lbls in self.eval(node.value)]
        if isinstance(node, ast.Subscript):
            key = node.slice.value  # type: ignore[attr-defined]  # checked: a str Constant
            return [str(lbls.get(key, "")) for lbls in self.eval(node.value)]
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.BoolOp):
            return self._boolop(node)
        if isinstance(node, ast.UnaryOp):
            operand = self.eval(node.operand)
            if isinstance(node.op, ast.Not):
                return _map1(operand, lambda x: not x)
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            return _map1(operand, lambda x: sign * _num(x, node))
        if isinstance(node, ast.BinOp):
            fn = _ARITH[type(node.op)]
            return _map2(
                self.eval(node.left), self.eval(node.right), lambda a, b: fn(_num(a, node), _num(b, node))
            )
        raise ExpectEvalError(f"cannot evaluate {_describe(node)}")  # unreachable after compile

    def _call(self, node: ast.Call) -> Any:
        name = node.func.id  # type: ignore[attr-defined]  # checked: a Name in _FUNCTIONS
        arg = self.eval(node.args[0])
        if name == "len":
            return len(arg)
        if name == "abs":
            return _map1(arg, lambda x: abs(_num(x, node)))
        if name == "all":
            return all(bool(x) for x in arg)
        if name == "any":
            return any(bool(x) for x in arg)
        nums = [_num(x, node) for x in arg]
        if name == "sum":
            return math.fsum(nums)
        if not nums:
            raise ExpectEvalError(f"{name}() of no series: the query returned nothing")
        return min(nums) if name == "min" else max(nums)

    def _compare(self, node: ast.Compare) -> Any:
        left = self.eval(node.left)
        result: Any = True
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                options = [e.value for e in right_node.elts]  # type: ignore[attr-defined]
                negate = isinstance(op, ast.NotIn)
                step = _map1(left, lambda x, opts=options, neg=negate: (x in opts) != neg)  # type: ignore[misc]
                right: Any = None
            else:
                right = self.eval(right_node)
                fn = _CMP[type(op)]
                sym = _CMP_TEXT[type(op)]
                step = _map2(left, right, lambda a, b, f=fn, s=sym: _cmp(f, s, a, b))  # type: ignore[misc]
            result = step if result is True else _map2(result, step, lambda a, b: bool(a) and bool(b))
            left = right
        return result

    def _boolop(self, node: ast.BoolOp) -> Any:
        is_and = isinstance(node.op, ast.And)
        acc = self.eval(node.values[0])
        for value_node in node.values[1:]:
            if not isinstance(acc, list) and (not acc if is_and else acc):
                return bool(acc)  # scalar short-circuit: `len(series) == 0 or value < 1` never reads value
            nxt = self.eval(value_node)
            if is_and:
                acc = _map2(acc, nxt, lambda a, b: bool(a) and bool(b))
            else:
                acc = _map2(acc, nxt, lambda a, b: bool(a) or bool(b))
        return acc if isinstance(acc, list) else bool(acc)


def _num(x: Any, node: ast.AST) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ExpectEvalError(f"in {_describe(node)}: {_fmt(x)} is not a number")
    return float(x)


def _cmp(fn: Callable[[Any, Any], bool], sym: str, a: Any, b: Any) -> bool:
    a_num = isinstance(a, int | float) and not isinstance(a, bool)
    b_num = isinstance(b, int | float) and not isinstance(b, bool)
    if a_num and b_num:
        return fn(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return fn(a, b)
    if sym in ("==", "!="):
        return fn(a, b)
    if a is None or b is None:
        raise ExpectEvalError(f"cannot compare a missing value with {sym}")
    raise ExpectEvalError(f"cannot compare {_fmt(a)} {sym} {_fmt(b)}: different types")


def _map1(x: Any, fn: Callable[[Any], Any]) -> Any:
    return [fn(v) for v in x] if isinstance(x, list) else fn(x)


def _map2(a: Any, b: Any, fn: Callable[[Any, Any], Any]) -> Any:
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):  # both come from the same series list, so this is a bug guard
            raise ExpectEvalError("per-series operands of different lengths")
        return [fn(x, y) for x, y in zip(a, b, strict=True)]
    if isinstance(a, list):
        return [fn(x, b) for x in a]
    if isinstance(b, list):
        return [fn(a, y) for y in b]
    return fn(a, b)
