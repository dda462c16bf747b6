"""Alertmanager-style label matchers: `=`, `!=`, `=~`, `!~`, regexes in RE2, fully anchored as Alertmanager does.

Parsing (`match:` entries, with Alertmanager's own grammar) lives in runbooks/matchers.py; regex
compilation in runbooks/regex.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from runbot.runbooks.regex import RegexError, compile_anchored

if TYPE_CHECKING:
    import re2

Op = Literal["=", "!=", "=~", "!~"]


class MatcherError(ValueError):
    pass


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str

    @property
    def regex(self) -> re2._Regexp | None:
        """The compiled `^(?:value)$` (cached by value); raises MatcherError when RE2 refuses it."""
        if self.op in ("=~", "!~"):
            try:
                return compile_anchored(self.value)
            except RegexError as exc:
                raise MatcherError(f"invalid regex {self.value!r}: {exc}") from None
        return None

    def matches(self, labels: dict[str, str]) -> bool:
        # Alertmanager treats a missing label as the empty string.
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        regex = self.regex
        assert regex is not None
        hit = regex.match(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def parse_entry(text: str) -> list[Matcher]:
    """One `match:` entry (one matcher, or a comma-separated list, optionally in braces)."""
    from runbot.runbooks.matchers import parse_entry as parse

    return parse(text)


def parse_matcher(text: str) -> Matcher:
    """Exactly one matcher (raises MatcherError otherwise)."""
    found = parse_entry(text)
    if len(found) != 1:
        raise MatcherError(f"expected one matcher in {text!r}, found {len(found)}")
    return found[0]


def explain(matchers: list[Matcher], labels: dict[str, str]) -> list[str]:
    """Why these matchers do not match: one line per failing matcher (empty when they all hold)."""
    reasons = []
    for m in matchers:
        if not m.matches(labels):
            actual = labels.get(m.name)
            shown = "missing" if actual is None else f'"{actual}"'
            reasons.append(f"{m} does not hold: {m.name} is {shown}")
    return reasons
