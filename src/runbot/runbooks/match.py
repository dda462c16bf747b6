"""Alertmanager-style label matchers: `=`, `!=`, `=~`, `!~`, regexes in RE2, fully anchored as Alertmanager does.

Parsing (`match:` entries, with Alertmanager's own grammar) lives in runbooks/matchers.py; regex
compilation in runbooks/regex.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from runbot.runbooks.regex import RegexError, compile_anchored

if TYPE_CHECKING:
    from runbot.runbooks.regex import AnchoredRegex

Op = Literal["=", "!=", "=~", "!~"]


class MatcherError(ValueError):
    pass


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str

    @property
    def regex(self) -> AnchoredRegex | None:
        """The compiled `^(?:value)$`, compiled on first use (a silence from Alertmanager may hold a regex RE2
        refuses: that raises MatcherError when it is evaluated, not when it is read)."""
        if self.op not in ("=~", "!~"):
            return None
        compiled: AnchoredRegex | None = self.__dict__.get("_regex")
        if compiled is None:
            try:
                compiled = compile_anchored(self.value)
            except RegexError as exc:
                raise MatcherError(f"invalid regex {self.value!r}: {exc}") from None
            object.__setattr__(self, "_regex", compiled)  # a cache, not state: equality ignores it
        return compiled

    def matches(self, labels: dict[str, str]) -> bool:
        # Alertmanager treats a missing label as the empty string.
        actual = labels.get(self.name, "")
        op = self.op
        if op == "=":
            return actual == self.value
        if op == "!=":
            return actual != self.value
        regex = self.__dict__.get("_regex") or self.regex
        assert regex is not None
        return regex.matches(actual) is (op == "=~")

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
