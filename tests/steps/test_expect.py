"""The `expect` language: semantics, broadcasting over series, and everything it must refuse."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runbot.steps.expect import ExpectError, ExpectEvalError, compile_expect, evaluate_expect

ONE = [{"labels": {"__name__": "ratio", "job": "api"}, "value": 0.02}]
TWO = [
    {"labels": {"code": "200", "job": "api"}, "value": 5.0},
    {"labels": {"code": "500", "job": "api"}, "value": 0.0},
]


def ev(expr: str, series: list[dict[str, Any]] = ONE, value: Any = "auto") -> bool:
    if value == "auto":
        value = series[0]["value"] if len(series) == 1 else None
    return evaluate_expect(compile_expect(expr), value, series)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("value < 0.05", True),
        ("value <= 0.02", True),
        ("value > 0.02", False),
        ("value >= 0.02", True),
        ("value == 0.02", True),
        ("value != 0.02", False),
        ("0.01 < value < 0.03", True),
        ("0.01 < value < 0.015", False),
        ("value * 100 < 5", True),
        ("value / 2 == 0.01", True),
        ("-value < 0", True),
        ("+value > 0", True),
        ("abs(-value) == value", True),
        ("value < 1 and value > 0", True),
        ("value > 1 or value < 0.1", True),
        ("not value > 1", True),
        ("not (value < 1 and value > 0)", False),
        ("len(series) == 1", True),
        ("len(series.value) == 1", True),
        ("all(series.value < 1)", True),
        ("any(series.value > 1)", False),
        ("series.labels.job == 'api' and value < 1", None),  # refused: per-series at top level
        ("True", True),
        ("false", False),
        ("value < inf", True),
        ("value % 0.015 < 0.01", True),
        ("sum(series.value) == 0.02", True),
        ("1e-3 < value", True),
    ],
)
def test_scalar_semantics(expr: str, expected: bool | None) -> None:
    if expected is None:
        with pytest.raises(ExpectError):
            compile_expect(expr)
    else:
        assert ev(expr) is expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("all(series.value > 0)", False),
        ("all(series.value >= 0)", True),
        ("any(series.value > 0)", True),
        ("any(series.value > 10)", False),
        ("len(series) == 2", True),
        ("len(series) > 0 and all(series.value < 10)", True),
        ('any(series.labels.code == "500" and series.value > 0)', False),
        ('all(series.labels.code != "500" or series.value == 0)', True),
        ('all(series.labels["job"] == "api")', True),
        ("all(series.labels.code in ['200', '500'])", True),
        ("any(series.labels.code not in ('200',))", True),
        ("all(series.labels.missing == '')", True),  # absent label reads as "", as in PromQL
        ("max(series.value) == 5", True),
        ("min(series.value) == 0", True),
        ("sum(series.value) / len(series) == 2.5", True),
        ("all(series.value * 2 <= 10)", True),
        ("all(0 <= series.value <= 5)", True),
        ("all(not series.value > 4)", False),
        ("any(abs(series.value - 5) < 0.001)", True),
        ("all(series.value > series.value - 1)", True),
    ],
)
def test_series_semantics(expr: str, expected: bool) -> None:
    assert ev(expr, TWO) is expected


def test_all_of_no_series_is_true_and_the_guard_works() -> None:
    assert ev("all(series.value > 0)", []) is True
    assert ev("len(series) > 0 and all(series.value > 0)", []) is False
    assert ev("any(series.value > 0)", []) is False
    assert ev("sum(series.value) == 0", []) is True


def test_value_undefined_for_many_or_no_series() -> None:
    with pytest.raises(ExpectEvalError, match="exactly one series; it returned 2"):
        ev("value > 1", TWO)
    with pytest.raises(ExpectEvalError, match="returned 0"):
        ev("value > 1", [])


def test_short_circuit_avoids_undefined_value() -> None:
    assert ev("len(series) == 0 or value < 1", []) is True
    assert ev("len(series) == 1 and value < 1", TWO) is False


def test_min_max_of_nothing() -> None:
    with pytest.raises(ExpectEvalError, match="no series"):
        ev("max(series.value) > 1", [])


def test_nan_and_inf_follow_ieee() -> None:
    nan = [{"labels": {}, "value": math.nan}]
    inf = [{"labels": {}, "value": math.inf}]
    assert ev("value > 0", nan) is False and ev("value <= 0", nan) is False and ev("value != value", nan)
    assert ev("value > 1e308", inf) is True and ev("value == inf", inf) is True
    assert ev("value / 0 > 1") is True  # PromQL: x/0 = +Inf, no exception
    assert ev("0 * value / 0 != 0 * value / 0") is True  # 0/0 = NaN


def test_type_errors_are_eval_errors() -> None:
    with pytest.raises(ExpectEvalError, match="different types"):
        ev("all(series.labels.code > 1)", TWO)
    with pytest.raises(ExpectEvalError, match="not a number"):
        ev("all(series.labels.code * 1000000000 == '')", TWO)  # no string repetition bombs
    with pytest.raises(ExpectEvalError, match="not a number"):
        ev("value + 1 > 0", [{"labels": {}, "value": "some string"}])
    assert ev("value == 'hello'", [{"labels": {}, "value": "hello"}]) is True  # string results compare


def test_string_comparison_of_labels_orders_lexically() -> None:
    assert ev("all(series.labels.code >= '200')", TWO) is True


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("value <", "syntax error"),
        ("value < 0.01)", "syntax error"),
        ("series.value > 0", "all(...) or any(...)"),
        ("series > 0", "series.value"),
        ("series.labels == 'x'", "series.labels.<name>"),
        ("len(value) > 0", "len() takes series"),
        ("all(value > 0)", "per-series expression"),
        ("all(series.value > 0, 1)", "exactly one argument"),
        ("all(x for x in series)", "not allowed"),
        ("value", "must be a condition"),
        ("value + 1", "must be a condition"),
        ("1", "must be a condition"),
        ("series", "list of series"),
        ("foo < 1", "unknown name `foo`"),
        ("__import__('os').system('id')", "unknown function"),
        ("open('/etc/passwd') == 1", "unknown function"),
        ("value.__class__ == 1", "not allowed"),
        ("series.__class__ == 1", "not `__class__`"),
        ("series.labels.__dict__ == 1", "not allowed"),
        ("().__class__ == 1", "not allowed"),
        ("value ** 2 < 1", "only + - * / %"),
        ("value // 2 < 1", "only + - * / %"),
        ("value << 2 < 1", "only + - * / %"),
        ("~value < 1", "not allowed"),
        ("[1, 2] == value", "not allowed"),
        ("{'a': 1} == value", "not allowed"),
        ("value if value else 1", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("(x := 1) == 1", "not allowed"),
        ("value is None", "not allowed"),
        ("f'{value}' == '1'", "not allowed"),
        ("b'x' == value", "unsupported literal"),
        ("None == value", "unsupported literal"),
        ("series[0] == 1", "not allowed"),
        ("series.labels[0] == 1", "not allowed"),
        ("min(value, 1) < 2", "exactly one argument"),
        ("all(series.value > 0, key=1)", "exactly one argument"),
        ("value in [x]", "literal list"),
        ("value in series.value", "literal list"),
        ("1 < value in [1]", "cannot be chained"),
        ("value.real > 0", "not allowed"),
        ("len(series).bit_length() > 0", "unknown function"),
        ("getattr(value, 'x') == 1", "unknown function"),
    ],
)
def test_refused_at_compile_time(expr: str, message: str) -> None:
    with pytest.raises(ExpectError) as info:
        compile_expect(expr)
    assert message in str(info.value)


def test_limits() -> None:
    with pytest.raises(ExpectError, match="too long"):
        compile_expect("value < 1 and " * 300 + "value < 1")
    with pytest.raises(ExpectError, match=r"too complex|too deeply"):
        compile_expect(" and ".join(["value<1"] * 120))
    with pytest.raises(ExpectError):
        compile_expect("(" * 500 + "value" + ")" * 500 + " < 1")


def test_multiline_and_whitespace() -> None:
    e = compile_expect("""
        len(series) > 0
        and all(series.value < 1)
    """)
    assert "\n" not in e.source and e.source.startswith("len(series) > 0") and e.source.endswith("< 1)")
    assert e.evaluate(None, TWO) is False


def test_compiled_expression_is_reusable_and_reports_value_use() -> None:
    e = compile_expect("value < 1")
    assert e.uses_value is True
    assert e.evaluate(0.5, [{"labels": {}, "value": 0.5}]) is True
    assert e.evaluate(2.0, [{"labels": {}, "value": 2.0}]) is False
    assert compile_expect("len(series) == 0").uses_value is False


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(ExpectEvalError, match="not a number"):
        ev("true + 1 == 2")
