"""Alertmanager-style label matchers: `=`, `!=`, `=~`, `!~`, regexes fully anchored as Alertmanager does."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

Op = Literal["=", "!=", "=~", "!~"]
_MATCHER = re.compile(
    r"""^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^"'\s].*?)\s*$"""
)


class MatcherError(ValueError):
    pass


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        if self.op in ("=~", "!~"):
            return re.compile(f"^(?:{self.value})$", re.DOTALL)
        return None

    def matches(self, labels: dict[str, str]) -> bool:
        # Alertmanager treats a missing label as the empty string.
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        hit = self.regex.match(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def parse_matcher(text: str) -> Matcher:
    m = _MATCHER.match(text)
    if not m:
        raise MatcherError(f'invalid matcher {text!r}: expected label op "value" with op one of = != =~ !~')
    raw = m.group("value")
    if raw[:1] in ('"', "'"):
        value = bytes(raw[1:-1], "utf-8").decode("unicode_escape") if "\\" in raw else raw[1:-1]
    else:
        value = raw
    op: Op = m.group("op")  # type: ignore[assignment]
    matcher = Matcher(m.group("name"), op, value)
    if matcher.op in ("=~", "!~"):
        try:
            _ = matcher.regex
        except re.error as exc:
            raise MatcherError(f"invalid regex {value!r} in matcher {text!r}: {exc}") from exc
    return matcher


def explain(matchers: list[Matcher], labels: dict[str, str]) -> list[str]:
    """Why these matchers do not match: one line per failing matcher (empty when they all hold)."""
    reasons = []
    for m in matchers:
        if not m.matches(labels):
            actual = labels.get(m.name)
            shown = "missing" if actual is None else f'"{actual}"'
            reasons.append(f"{m} does not hold: {m.name} is {shown}")
    return reasons
