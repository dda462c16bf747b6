"""Template rendering is bounded: no runbook template can take unbounded time or memory, or block other runs."""

from __future__ import annotations

import asyncio
import time

import pytest

from runbot.runbooks.templating import (
    DEFAULT_LIMITS,
    KEY_LIMITS,
    TemplateBudgetExceeded,
    TemplateTimeout,
    render,
    render_async,
)

SCOPE = {"alert": {"labels": {"instance": "db-1", "long": "x" * 100}}, "params": {"n": 3}, "steps": {}}

# Each bomb is refused, and refused fast: before it allocates what it asks for.
BOMBS = {
    "nested loops": "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
    "a huge range": "{{ range(10**9)|list|length }}",
    "string repetition": "{{ 'x' * 1000000000 }}",
    "list repetition": "{{ (['x'] * 1000000000)|length }}",
    "a huge power": "{{ 10 ** (10 ** 10) }}",
    "doubling with ~": "{% set s = 'x' * 100000 %}" + "{% set s = s ~ s %}" * 40 + "{{ s|length }}",
    "doubling with +": "{% set s = 'x' * 100000 %}" + "{% set s = s + s %}" * 40 + "{{ s|length }}",
    "center filter": "{{ 'x'|center(1000000000) }}",
    "percent width": "{{ '%999999999s' % 'x' }}",
    "percent star width": "{{ '%*s' % (999999999, 'x') }}",
    "format width": "{{ '{:>999999999}'.format('x') }}",
    "format nested width": "{{ '{:>{}}'.format('x', 999999999) }}",
    "format filter": "{{ '%999999999d'|format(1) }}",
    "str method width": "{{ 'x'.ljust(1000000000) }}",
    "replace growth": "{{ ('x' * 1000000).replace('x', 'y' * 1000000) }}",
    "join with a huge separator": "{{ range(10000)|map('string')|join('x' * 1000000) }}",
    "join of shared big strings": "{{ (['x' * 999999] * 1000)|join }}",
    "output of a big list": "{{ ['x' * 999999] * 1000 }}",
    "literal text in a loop": "{% for i in range(10000) %}" + "y" * 1000 + "{% endfor %}",
    "loop in a block set": "{% set b %}{% for i in range(10000) %}{{ 'z' * 1000 }}{% endfor %}{% endset %}{{ b|length }}",
    "slice into many lists": "{{ [1]|slice(1000000000)|list }}",
    "dict.fromkeys": "{{ dict.fromkeys(range(10000) * 1000)|length }}",
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
}


@pytest.mark.parametrize("template", BOMBS.values(), ids=BOMBS.keys())
def test_a_template_bomb_is_refused_with_the_limit_it_hit(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateBudgetExceeded) as exc:
        render({"message": template}, SCOPE)
    assert time.monotonic() - started < DEFAULT_LIMITS.seconds + 1.0
    assert "simplify" in str(exc.value) or "recursed" in str(exc.value)


def test_exponential_macro_recursion_stops_at_the_time_budget() -> None:
    bomb = "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% else %}x{% endif %}{% endmacro %}{{ f(40) }}"
    started = time.monotonic()
    with pytest.raises(TemplateTimeout, match=r"longer than 0\.2 s"):
        render(bomb, SCOPE, DEFAULT_LIMITS.with_seconds(0.2))
    assert time.monotonic() - started < 2.0


def test_a_concurrency_key_gets_a_small_budget() -> None:
    bomb = "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    started = time.monotonic()
    with pytest.raises(TemplateTimeout):
        render(bomb, SCOPE, KEY_LIMITS)
    assert time.monotonic() - started < 1.0
    assert KEY_LIMITS.seconds <= 0.01


ORDINARY = [
    ("{{ alert.labels.instance }}", "db-1"),
    ("{% for k, v in alert.labels|dictsort %}{{ k }}={{ v|length }} {% endfor %}", "instance=4 long=100 "),
    ("{{ 'a' ~ 'b' ~ params.n }}", "ab3"),
    ("{{ '%s-%05d' % ('a', 3) }}", "a-00003"),
    ("{{ 'order 1234567: %s' % 'ok' }}", "order 1234567: ok"),
    ("{{ '{}:{:>4}'.format('a', 7) }}", "a:   7"),
    ("{{ [1, 2]|join(', ') }}", "1, 2"),
    ("{{ 'x'|center(5) }}", "  x  "),
    ("{% for i in range(3) %}{{ loop.index }}{{ '.' if not loop.last }}{% endfor %}", "1.2.3"),
    ("{{ range(params.n)|list }}", [0, 1, 2]),
    ("{{ 2 ** 10 }}", 1024),
    ("{{ 'x' * 3 }}", "xxx"),
    ("{% macro greet(who) %}hi {{ who }}{% endmacro %}{{ greet('bob') }}", "hi bob"),
]


@pytest.mark.parametrize(("template", "expected"), ORDINARY)
def test_ordinary_templates_render_as_before(template: str, expected: object) -> None:
    assert render(template, SCOPE) == expected


def test_a_slow_template_is_rendered_off_the_event_loop() -> None:
    """The engine renders on its loop with a small budget; a template that needs more time is rendered again
    in a render process, so the loop (and every other run on it) keeps going meanwhile."""
    slow = ("{% for a in range(40) %}{% for b in range(40) %}{{ (('a' ~ b)|upper|lower|trim)[:0] }}"
            "{% endfor %}{% endfor %}done")
    inline = DEFAULT_LIMITS.with_seconds(0.002)
    with pytest.raises(TemplateTimeout):
        render(slow, SCOPE, inline)  # too slow for the loop's budget ...

    async def scenario() -> tuple[str, float]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        result = await render_async(slow, SCOPE, inline, DEFAULT_LIMITS.with_seconds(60))
        stop.set()
        await task
        return result, max(gaps)

    result, worst_gap = asyncio.run(scenario())
    assert result == "done"  # ... but renders with the full budget, elsewhere
    assert worst_gap < 0.5  # the loop was blocked at most for the inline budget (plus a loaded machine's noise)


def test_a_render_process_makes_valid_secret_placeholders() -> None:
    from runbot.redaction import Redactor
    from runbot.runbooks.render_pool import POOL
    from runbot.runbooks.templating import resolve_secrets

    out = asyncio.run(POOL.render("{{ secret('kv/db#password') }}", SCOPE, DEFAULT_LIMITS.with_seconds(30)))
    assert resolve_secrets(out, lambda ref: "s3cr3t", Redactor()) == "s3cr3t"


def test_a_bomb_in_a_render_process_stops_at_its_budget_and_the_pool_goes_on() -> None:
    from runbot.runbooks.render_pool import RenderPool

    pool = RenderPool(workers=1)
    try:
        bomb = "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}"
        with pytest.raises(TemplateTimeout):
            asyncio.run(pool.render(bomb, SCOPE, DEFAULT_LIMITS.with_seconds(0.2)))
        assert asyncio.run(pool.render("{{ 1 + 1 }}", SCOPE, DEFAULT_LIMITS.with_seconds(30))) == 2
    finally:
        pool.close()
