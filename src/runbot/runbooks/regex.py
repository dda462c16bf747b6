"""Regexes from runbooks, labels and Alertmanager, evaluated as Alertmanager evaluates them: RE2, anchored.

Alertmanager compiles a matcher's value with Go's `regexp` (RE2 syntax, linear time) as
`^(?:` + value + `)$`. Python's `re` is a backtracking engine with another syntax (`\\d` matches any
Unicode digit, `$` matches before a final newline, `(?i)` must lead the pattern, `\\p{L}`, `\\Q..\\E`, `\\z`
are refused while lookaheads and backreferences are accepted) and `(a+)+$` can take seconds on one
label. So every regex that comes from outside runbot goes through here, on google-re2 (the C++ RE2
that Go's engine was modelled on). Our own fixed internal patterns may stay on `re`.

C++ RE2 accepts a few things the Go engine of the Alertmanager we test against (0.25, built with
Go 1.19) refuses; those are refused here too, so lint never passes what Alertmanager would refuse:
`\\C` (any byte), `(?<name>...)` groups (Go 1.22+ only) and Unicode scripts newer than Unicode 13.
"""

from __future__ import annotations

import functools

import re2

# Scripts added in Unicode 14-16: unknown to Go 1.19's regexp (Unicode 13), which Alertmanager 0.25 uses.
_NEWER_SCRIPTS = frozenset({
    "Cypro_Minoan", "Old_Uyghur", "Tangsa", "Toto", "Vithkuqi", "Kawi", "Nag_Mundari", "Garay",
    "Gurung_Khema", "Kirat_Rai", "Ol_Onal", "Sunuwar", "Todhri", "Tulu_Tigalari",
})  # fmt: skip

_UNSUPPORTED = (
    ("(?=", "lookahead `(?=...)`"), ("(?!", "negative lookahead `(?!...)`"),
    ("(?<=", "lookbehind `(?<=...)`"), ("(?<!", "negative lookbehind `(?<!...)`"),
    ("(?>", "atomic group `(?>...)`"), ("(?P=", "named backreference `(?P=name)`"),
    ("(?#", "comment group `(?#...)`"),
)  # fmt: skip


class RegexError(ValueError):
    """A regex RE2 (or Alertmanager's Go engine) refuses; the message says why in the user's terms."""


def _options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print every refused pattern to stderr
    opts.never_capture = True  # only "does it match" is ever asked
    return opts


_OPTS = _options()


def _go_only_refusals(pattern: str) -> str | None:
    """What Go's regexp refuses although C++ RE2 accepts it (None when nothing)."""
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt == "Q":  # \Q...\E is literal text: skip it whole
                end = pattern.find("\\E", i + 2)
                i = len(pattern) if end < 0 else end + 2
                continue
            if nxt == "C":
                return "`\\C` (match any byte) is not supported by Alertmanager's regex engine"
            if nxt in "pP" and i + 2 < len(pattern) and pattern[i + 2] == "{":
                end = pattern.find("}", i + 3)
                name = pattern[i + 3 : end].lstrip("^") if end > 0 else ""
                if name in _NEWER_SCRIPTS:
                    return (f"Unicode script `{name}` is newer than the Unicode 13 tables of Alertmanager's regex "
                            "engine (Go 1.19), which refuses it")  # fmt: skip
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            if pattern.startswith("[^]", i) or pattern.startswith("[]", i):
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
            return "named group `(?<name>...)` is refused by Alertmanager 0.25 (Go 1.19); write `(?P<name>...)`"
        i += 1
    return None


def _explain(pattern: str, detail: str) -> str:
    for token, what in _UNSUPPORTED:
        if token in pattern:
            return f"{what} is not supported by RE2, Alertmanager's regex engine ({detail})"
    if "invalid escape sequence: \\" in detail and detail[-1:].isdigit():
        return f"backreferences like `{detail.rsplit(' ', 1)[-1]}` are not supported by RE2, Alertmanager's regex engine"
    return f"not a valid RE2 regex, the syntax Alertmanager uses ({detail})"


_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED  # the pattern carries its own ^(?:...)$, as in Alertmanager
_SHORT = 512  # label values up to this length have their verdicts memoised (values repeat across alerts)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON: Go's decoder would have made it U+FFFD
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class AnchoredRegex:
    """A compiled `^(?:pattern)$`. `matches` calls RE2 directly (the Python wrapper's `match` builds match
    objects and character offsets we never use: 5x slower) and memoises verdicts on short values."""

    __slots__ = ("_memo", "_re", "pattern")

    def __init__(self, pattern: str, compiled: re2._re2.RE2) -> None:
        self.pattern = pattern
        self._re = compiled
        self._memo: dict[str, bool] = {}

    def matches(self, text: str) -> bool:
        hit = self._memo.get(text)
        if hit is not None:
            return hit
        data = _utf8(text)
        hit = self._re.Match(_UNANCHORED, data, 0, len(data))[0][0] != -1
        if len(text) <= _SHORT:
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[text] = hit
        return hit


@functools.lru_cache(maxsize=4096)
def compile_anchored(pattern: str) -> AnchoredRegex:
    """`^(?:pattern)$` compiled by RE2, as Alertmanager compiles a matcher's value; raises RegexError."""
    try:
        compiled = re2.compile("^(?:" + pattern + ")$", _OPTS)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RegexError(_explain(pattern, detail)) from None
    go = _go_only_refusals(pattern)
    if go is not None:
        raise RegexError(go)
    return AnchoredRegex(pattern, compiled._regexp)


def fullmatch(pattern: str, text: str) -> bool:
    """Whether the whole of `text` matches `pattern` the way Alertmanager's `=~` decides it."""
    return compile_anchored(pattern).matches(text)
