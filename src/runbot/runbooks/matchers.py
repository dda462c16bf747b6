"""A runbook's `match:` entries read exactly as Alertmanager's configuration loader reads a route's `matchers:`.

Alertmanager has two matcher parsers (github.com/prometheus/alertmanager):

* the **classic** one, `pkg/labels/parse.go` (`ParseMatchers`): one entry is a comma-separated list of
  matchers, optionally in braces; label names are `[a-zA-Z_:][a-zA-Z0-9_:]*`; a value may be unquoted or
  in double quotes, with OpenMetrics escapes (`\\n`, `\\"`, `\\\\`; any other backslash is literal, so
  `"C:\\Users\\admin"` means what it says);
* the **UTF-8** one, `matcher/parse` (lexer.go, parse.go): names and values quoted or unquoted, quoted
  text decoded by Go's string-literal rules (`strconv.Unquote`), any UTF-8 label name in quotes.

Which one reads `matchers:` depends on the Alertmanager version: 0.25 and 0.26 (Debian's
prometheus-alertmanager 0.25, whose amtool is our test oracle) have only the classic parser; 0.27 and
later default to a *fallback* mode (matcher/compat): both parsers run, the classic result wins whenever
the classic parser accepts the entry (if the two disagree Alertmanager logs "Matchers input has
disagreement"), and the UTF-8 result is used only where the classic parser refuses. So the classic
reading is what every Alertmanager does for an input the classic parser accepts, and that is what runbot
follows (`MODE = "classic"`). `lint_entry` also runs the UTF-8 parser and warns where the two read an
entry differently, because Alertmanager's `utf8-strict-mode` (and its future default) reads it the
UTF-8 way.

Both parsers are ports of the Go code, kept close to it on purpose (same states, same quirks); every
error carries the 1-based column of the problem inside the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runbot.runbooks.match import Matcher, MatcherError, Op
from runbot.runbooks.regex import RegexError, compile_anchored

Mode = Literal["classic", "utf8", "fallback"]
MODE: Mode = "classic"

# Go's unicode.IsSpace (the White_Space property): Python's str.isspace also counts \x1c-\x1f.
_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
                      "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")  # fmt: skip
_RE2_SPACE = frozenset("\t\n\f\r ")  # `\s` in Go's regexp (the classic parser's own regex)
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_NAME_CHARS = _NAME_START | frozenset("0123456789")


@dataclass(frozen=True)
class EntryError(MatcherError):
    """A refused entry: `column` is 1-based, counted in characters of the entry."""

    column: int
    reason: str

    def __str__(self) -> str:
        return f"column {self.column}: {self.reason}"


def _matcher(op: Op, name: str, value: str, column: int) -> Matcher:
    if op in ("=~", "!~"):
        try:
            compile_anchored(value)
        except RegexError as exc:
            raise EntryError(column, f"invalid regex {value!r}: {exc}") from None
    return Matcher(name, op, value)


# ---- the classic parser (pkg/labels/parse.go) ----------------------------------------------------------------


def _split_classic(s: str) -> list[tuple[int, str]]:
    """ParseMatchers' tokenizer: (offset in the entry, token); commas split outside double quotes."""
    offset = 0
    if s.startswith("{"):
        s, offset = s[1:], 1
    if s.endswith("}"):
        s = s[:-1]
    inside, escaped = False, False
    tokens: list[tuple[int, str]] = []
    start, buf = 0, list[str]()
    for i, r in enumerate(s):
        if r == ",":
            if not inside:
                tokens.append((offset + start, "".join(buf)))
                buf, start = [], i + 1
                continue
            # Go falls through here without touching `escaped`: a quoted `\,` keeps the escape pending.
        elif r == '"':
            if not escaped:
                inside = not inside
            else:
                escaped = False
        elif r == "\\":
            escaped = not escaped
        else:
            escaped = False
        buf.append(r)
    last = "".join(buf)
    trimmed = _go_trim(last)
    if trimmed:
        lead = len(last) - len(_go_trim_left(last))
        tokens.append((offset + start + lead, trimmed))
    return tokens


def _go_trim_left(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in _GO_SPACE:
        i += 1
    return s[i:]


def _go_trim(s: str) -> str:
    s = _go_trim_left(s)
    j = len(s)
    while j > 0 and s[j - 1] in _GO_SPACE:
        j -= 1
    return s[:j]


def _classic_one(s: str, base: int) -> Matcher:
    """ParseMatcher: `^\\s*(name)\\s*(=~|=|!=|!~)\\s*((?s).*?)\\s*$`, then the value's unescaping."""
    n, i = len(s), 0
    while i < n and s[i] in _RE2_SPACE:
        i += 1
    if i == n or s[i] not in _NAME_START:
        what = "a label name ([a-zA-Z_:][a-zA-Z0-9_:]*)" + (
            '; a quoted or non-ASCII label name needs Alertmanager 0.27+ (the UTF-8 parser)' if i < n and (s[i] == '"' or ord(s[i]) > 127) else "")  # fmt: skip
        raise EntryError(base + i + 1, f"bad matcher format {s!r}: expected {what}")
    name_start = i
    while i < n and s[i] in _NAME_CHARS:
        i += 1
    name = s[name_start:i]
    while i < n and s[i] in _RE2_SPACE:
        i += 1
    op: Op | None = None
    for cand in ("=~", "=", "!=", "!~"):
        if s.startswith(cand, i):
            op = cand
            break
    if op is None:
        raise EntryError(base + i + 1, f"bad matcher format {s!r}: expected an operator (= != =~ !~) after {name!r}")
    i += len(op)
    while i < n and s[i] in _RE2_SPACE:
        i += 1
    end = n
    while end > i and s[end - 1] in _RE2_SPACE:
        end -= 1
    raw, raw_at = s[i:end], i
    quoted = raw.startswith('"')
    if quoted:
        raw, raw_at = raw[1:], raw_at + 1
    out: list[str] = []
    escaped = False
    last = len(raw) - 1
    for j, r in enumerate(raw):
        if escaped:
            escaped = False
            if r == "n":
                out.append("\n")
            elif r in '"\\':
                out.append(r)
            else:
                out.append("\\" + r)  # a spurious escape: the backslash is literal
            continue
        if r == "\\":
            if j < last:
                escaped = True
                continue
            out.append("\\")
        elif r == '"':
            if not quoted or j < last:
                raise EntryError(base + raw_at + j + 1, f'matcher value contains unescaped double quote: {s[i:end]}'
                                 + ('' if quoted else ' (quote the whole value: name="...")'))  # fmt: skip
            quoted = False
        else:
            out.append(r)
    if quoted:
        raise EntryError(base + i + 1, f"matcher value contains unescaped double quote: {s[i:end]} (no closing quote)")
    return _matcher(op, name, "".join(out), base + raw_at + 1)


def parse_classic(entry: str) -> list[Matcher]:
    """labels.ParseMatchers: zero or more matchers; raises EntryError at the first refused one."""
    return [_classic_one(token, offset) for offset, token in _split_classic(entry)]


# ---- the UTF-8 parser (matcher/parse) --------------------------------------------------------------------------

_RESERVED = frozenset("{}!=~,\\\"'`")


def _reserved(r: str) -> bool:
    return r in _GO_SPACE or r in _RESERVED


@dataclass(frozen=True)
class _Tok:
    kind: str  # "{", "}", ",", "=", "!=", "=~", "!~", "quoted", "unquoted", "eof"
    text: str
    col: int  # 0-based column of the token's first character


def _lex(s: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(s)
    while i < n:
        r = s[i]
        if r in "{},":
            toks.append(_Tok(r, r, i))
            i += 1
        elif r in "=!":
            if s.startswith(("!=", "!~", "=~"), i):
                toks.append(_Tok(s[i : i + 2], s[i : i + 2], i))
                i += 2
            elif r == "=":
                toks.append(_Tok("=", "=", i))
                i += 1
            else:
                raise EntryError(i + 2, f"{s[i:i+2]!r}: expected '=' or '~' after '!'")
        elif r == '"':
            j, esc = i + 1, False
            while j < n:
                if esc:
                    esc = False
                elif s[j] == "\\":
                    esc = True
                elif s[j] == '"':
                    break
                j += 1
            if j >= n:
                raise EntryError(i + 1, f"{s[i:]}: missing end \"")
            toks.append(_Tok("quoted", s[i : j + 1], i))
            i = j + 1
        elif not _reserved(r):
            j = i
            while j < n and not _reserved(s[j]):
                j += 1
            toks.append(_Tok("unquoted", s[i:j], i))
            i = j
        elif r in _GO_SPACE:
            i += 1
        else:
            raise EntryError(i + 1, f"{r!r}: invalid input")
    toks.append(_Tok("eof", "", n))
    return toks


def go_unquote(lit: str) -> str:
    """strconv.Unquote for a double-quoted Go string literal, then Alertmanager's valid-UTF-8 check."""
    if len(lit) < 2 or lit[0] != '"' or lit[-1] != '"':
        raise ValueError("not a quoted string")
    body = lit[1:-1]
    if "\n" in body:
        raise ValueError("a newline inside quotes")
    out = bytearray()
    i, n = 0, len(body)
    simple = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}
    while i < n:
        c = body[i]
        if c == '"':
            raise ValueError("an unescaped quote")
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("a trailing backslash")
        e = body[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"\\{e} needs {width} hex digits")
            v = int(digits, 16)
            if e == "x":
                out.append(v)
            elif v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                raise ValueError(f"\\{e}{digits} is not a Unicode code point")
            else:
                out += chr(v).encode("utf-8")
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError("an octal escape needs 3 digits up to \\377")
            out.append(int(digits, 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{e}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("quoted string contains invalid UTF-8 code points") from None


def parse_utf8(entry: str) -> list[Matcher]:
    """matcher/parse.Matchers: the same grammar as the Go state machine (braces, commas, quoted or not)."""
    toks = _lex(entry)
    pos = 0

    def peek() -> _Tok:
        return toks[pos]

    def fail(t: _Tok, why: str) -> EntryError:
        shown = "end of input" if t.kind == "eof" else repr(t.text)
        return EntryError(t.col + 1, f"unexpected {shown}: {why}")

    def text_of(t: _Tok) -> str:
        if t.kind == "unquoted":
            return t.text
        try:
            return go_unquote(t.text)
        except ValueError as exc:
            raise EntryError(t.col + 1, f"{t.text}: invalid input ({exc}; quoted text follows Go string rules)") from None

    out: list[Matcher] = []
    if peek().kind == "eof":
        return out
    brace = peek().kind == "{"
    if brace:
        pos += 1
    while True:
        t = peek()
        if t.kind == "}" or (t.kind == "eof" and out):
            break
        if t.kind not in ("quoted", "unquoted"):
            raise fail(t, "expected label name")
        name = text_of(t)
        pos += 1
        t = peek()
        if t.kind not in ("=", "!=", "=~", "!~"):
            raise fail(t, "expected an operator such as '=', '!=', '=~' or '!~'")
        op: Op = t.kind  # type: ignore[assignment]
        pos += 1
        t = peek()
        if t.kind not in ("quoted", "unquoted"):
            raise fail(t, "expected label value")
        out.append(_matcher(op, name, text_of(t), t.col + 1))
        pos += 1
        t = peek()
        if t.kind == ",":
            pos += 1
            if peek().kind not in ("}", "quoted", "unquoted", "eof"):
                raise fail(peek(), "expected a matcher or close brace after comma")
            continue
        if t.kind in ("}", "eof"):
            break
        raise fail(t, "expected a comma or close brace")
    t = peek()
    if brace:
        if t.kind != "}":
            raise fail(t, "expected close brace")
        pos += 1
    elif t.kind == "}":
        raise fail(t, "expected opening brace")
    if peek().kind != "eof":
        raise fail(peek(), "expected end of input")
    return out


# ---- what runbot uses ------------------------------------------------------------------------------------------


def parse_entry(entry: str, mode: Mode | None = None) -> list[Matcher]:
    """The matchers of one `match:` entry as Alertmanager's config loader reads them (in `mode`)."""
    mode = mode or MODE
    if mode == "classic":
        return parse_classic(entry)
    if mode == "utf8":
        return parse_utf8(entry)
    try:
        return parse_classic(entry)
    except EntryError as classic_error:
        try:
            return parse_utf8(entry)
        except EntryError:
            raise classic_error from None


@dataclass(frozen=True)
class EntryLint:
    matchers: list[Matcher] | None  # None: refused
    error: EntryError | None
    warnings: list[str]


def _show(ms: list[Matcher]) -> str:
    return ", ".join(f"{m.name}{m.op}{m.value!r}" for m in ms) or "no matchers"


def lint_entry(entry: str, mode: Mode | None = None) -> EntryLint:
    """Parse one entry for `runbot lint`: the error (with its column) and warnings where the parsers differ."""
    try:
        ms = parse_entry(entry, mode)
    except EntryError as exc:
        return EntryLint(None, exc, [])
    warnings: list[str] = []
    try:
        other: list[Matcher] | None = parse_utf8(entry)
        other_error: EntryError | None = None
    except EntryError as exc:
        other, other_error = None, exc
    try:
        classic: list[Matcher] | None = parse_classic(entry)
    except EntryError:
        classic = None
    if classic is not None and other is None and other_error is not None:
        warnings.append(f"Alertmanager's UTF-8 matcher parser (0.27+ utf8-strict-mode) refuses this entry at "
                        f"{other_error}; the classic parser (used here and by default) reads it as {_show(classic)}. "
                        'Double-quote values and regexes and escape backslashes (\\\\) to be future-proof')  # fmt: skip
    elif classic is not None and other is not None and classic != other:
        warnings.append(f"Alertmanager's two matcher parsers read this entry differently: classic (used here and "
                        f"by default) {_show(classic)}; UTF-8 (0.27+ utf8-strict-mode) {_show(other)}")  # fmt: skip
    elif classic is None and other is not None:
        warnings.append(f"only Alertmanager 0.27+ reads this entry (UTF-8 parser: {_show(other)}); "
                        "Alertmanager 0.25/0.26 refuse it")  # fmt: skip
    if len(ms) > 1:
        pass  # a list in one entry is fine: Alertmanager ANDs them like separate entries
    if not entry.strip() or not ms:
        warnings.append("this entry holds no matcher (Alertmanager accepts it and adds nothing)")
    return EntryLint(ms, None, warnings)
