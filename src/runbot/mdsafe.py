"""Markdown that stays text: escaping for values that come from alerts, steps and people.

Exports and postmortems are Markdown that someone will render (GitHub, a wiki, an editor preview), and
CommonMark passes raw HTML through. A label, annotation, step output or Slack user name is attacker-chosen,
so every value placed in Markdown goes through one of these:

- `text` / `cell`: inline text. Every character that can open markup (HTML, links, images, autolinks,
  emphasis, code spans, entities, table pipes) is backslash-escaped and line breaks become spaces, so the
  value cannot start a block (heading, HTML block, fence) or leave its table cell. Where such text lands
  inside a code span the backslashes are literal, but so is everything else: a backtick ending the span
  early leaves only escaped text behind it.
- `code`: an inline code span delimited by a backtick run longer than any in the value.
- `fence`: a fenced code block whose fence is longer than any backtick run inside, so no line of the content
  can close it (a fence is only closed by a run at least as long).
- `link`: a link only for `http`/`https` URLs; anything else (`javascript:`, `data:`, `vbscript:`) is shown
  as escaped text.

`Md` marks text that is already safe Markdown; the postmortem renderer escapes every other value it prints.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["Md", "cell", "code", "fence", "link", "safe_url", "text"]

# ASCII punctuation that can open or close inline markup (with `[`/`]` escaped, `(`, `)` and `!` cannot form
# a link or image, and with `<` escaped no HTML or autolink can start).
# An underscore inside a word (step_id) cannot open emphasis and stays as is, for readability.
_SPECIAL = re.compile(r"[\\`*\[\]<>|~&]|(?<!\w)_+|(?<!_)_+(?!\w)")
# What only matters at the start of a line (a value may be placed there by a custom template): headings, block
# quotes, list items, setext underlines, ordered list numbers.
_LEADING = re.compile(r"^(\s*)([#>+\-=])")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85\x0b\x0c]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_BACKTICKS = re.compile(r"`+")
_LEADING_DIGITS = re.compile(r"^(\s*\d+)([.)])")


class Md(str):
    """A string that is already safe Markdown (printed as is by the postmortem renderer)."""

    __slots__ = ()


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


def _escape_match(m: re.Match[str]) -> str:
    return "".join("\\" + c for c in m.group(0))


def text(value: Any) -> Md:
    """`value` as inline Markdown text that renders as exactly those characters and nothing else."""
    s = _CONTROL.sub("", _LINE_BREAKS.sub(" ", _plain(value)))
    s = _LEADING_DIGITS.sub(r"\1\\\2", _LEADING.sub(r"\1\\\2", _SPECIAL.sub(_escape_match, s)))
    if s[:1] in (" ", "\t"):  # indentation at a line start would make a code block; an entity is not indentation
        s = f"&#{ord(s[0])};{s[1:]}"
    return Md(s)


def cell(value: Any) -> Md:
    """`value` inside a table cell: inline text (pipes escaped, no line breaks); empty stays empty."""
    return text(value)


def _longest_run(s: str) -> int:
    return max((len(m) for m in _BACKTICKS.findall(s)), default=0)


def code(value: Any, table: bool = False) -> Md:
    """An inline code span showing `value` literally, whatever backticks it contains.

    In a table cell (`table=True`) pipes are escaped, as GFM tables require even inside code spans."""
    s = _CONTROL.sub("", _LINE_BREAKS.sub(" ", _plain(value)))
    if table:
        s = s.replace("|", "\\|")
    if not s:
        return Md("")
    ticks = "`" * (_longest_run(s) + 1)
    pad = " " if s.startswith(("`", " ")) or s.endswith(("`", " ")) else ""
    return Md(f"{ticks}{pad}{s}{pad}{ticks}")


def fence(value: Any, info: str = "") -> Md:
    """A fenced code block (no trailing newline) that no line of `value` can close.

    Place it at the start of a line outside any list or block quote: leaving such a container ends the
    block too."""
    s = _CONTROL.sub("", _plain(value).replace("\r\n", "\n").replace("\r", "\n"))
    ticks = "`" * max(3, _longest_run(s) + 1)
    lang = re.sub(r"[^A-Za-z0-9_+.-]", "", info)
    return Md(f"{ticks}{lang}\n{s}{'' if s.endswith(chr(10)) or not s else chr(10)}{ticks}")


def safe_url(url: Any) -> str | None:
    """The URL if its scheme is http or https and it has a host, else None."""
    s = _plain(url).strip()
    try:
        parts = urlsplit(s)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return s


def link(label: Any, url: Any) -> Md:
    """`[label](url)` for an http(s) URL; otherwise the label and URL as plain text."""
    target = safe_url(url)
    if target is None:
        shown = _plain(url)
        return text(f"{_plain(label)} ({shown})" if shown and shown != _plain(label) else _plain(label))
    dest = quote(target, safe="/:?#@!$&*+,;=%~-._")  # spaces, <, >, (, ), [, ], quotes, backslashes encoded
    return Md(f"[{text(label) or text(target)}]({dest})")


def image(alt: Any, src: str) -> Md:
    """`![alt](src)` for a source runbot made itself (a data: URI of a raster image, or a relative file)."""
    dest = quote(src, safe="/:;,=+%~-._")
    return Md(f"![{text(alt)}]({dest})")
