"""Values put into Markdown render as exactly their characters under CommonMark: no HTML, no link, no escape.

The renderer is markdown-it in CommonMark mode with raw HTML on (as CommonMark specifies) and GFM tables,
with link validation switched off, so only runbot's escaping can keep a hostile value inert.
"""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from runbot import mdsafe
from tests.support.hostile import EVERYTHING, FENCE_BREAK, commonmark_html

# Text that mixes Markdown's punctuation, HTML, URLs and line breaks with ordinary characters.
PIECES = st.sampled_from(["<", ">", "&", "`", "``", "```", "*", "_", "__", "[", "]", "(", ")", "!", "|", "\\", "#",
                          "-", "+", "=", "~", "1.", "\n", "\r\n", " ", "    ", "\t", "javascript:", "http://x.example",
                          "<script>", "</p>", "&amp;", "&#60;", "a", "b_c", "é", "0"])  # fmt: skip
HOSTILE = st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=30).map("".join)
FAST = settings(max_examples=300, deadline=None)


def _tags(rendered: str) -> set[str]:
    return {m.lower() for m in re.findall(r"<\s*/?\s*([A-Za-z][A-Za-z0-9]*)", rendered)}


def _clean(value: str) -> str:
    """What `text` promises to show: line breaks as spaces, control characters dropped."""
    s = re.sub(r"\r\n|[\r\n\u2028\u2029\x85\x0b\x0c]", " ", value)
    return re.sub(r"[\x00-\x08\x0e-\x1f\x7f]", "", s)


@FAST
@given(HOSTILE)
def test_text_renders_as_one_paragraph_of_exactly_its_characters(value):
    rendered = commonmark_html("before " + mdsafe.text(value) + " after\n")
    assert _tags(rendered) <= {"p"}, rendered
    inner = rendered.strip().removeprefix("<p>").removesuffix("</p>")
    assert html.unescape(inner) == "before " + _clean(value) + " after"


@FAST
@given(HOSTILE)
def test_text_at_the_start_of_a_line_starts_no_block(value):
    rendered = commonmark_html(mdsafe.text(value) + "\n")
    assert _tags(rendered) <= {"p"}, rendered


@FAST
@given(st.lists(HOSTILE, min_size=1, max_size=4))
def test_cells_stay_in_their_column(values):
    row = "| " + " | ".join(mdsafe.cell(v) or " " for v in values) + " |"
    table = "| " + " | ".join(f"h{i}" for i in range(len(values))) + " |\n|" + "---|" * len(values) + "\n" + row + "\n"
    rendered = commonmark_html(table)
    assert _tags(rendered) <= {"table", "thead", "tbody", "tr", "th", "td"}, rendered
    assert rendered.count("<td") == len(values)


@FAST
@given(HOSTILE)
def test_a_fence_holds_any_content_as_one_code_block(value):
    rendered = commonmark_html("before\n\n" + mdsafe.fence(value, "json") + "\n\nafter\n")
    assert _tags(rendered) <= {"p", "pre", "code"}, rendered
    assert rendered.count("<pre>") == 1 and rendered.endswith("<p>after</p>\n")
    code = rendered[rendered.index("<pre>"):rendered.index("</pre>")]
    shown = html.unescape(re.sub(r"<[^>]+>", "", code))
    expected = re.sub(r"[\x00-\x08\x0e-\x1f\x7f]", "", value.replace("\r\n", "\n").replace("\r", "\n"))
    assert shown.rstrip("\n") == expected.rstrip("\n")


@FAST
@given(HOSTILE)
def test_inline_code_shows_its_value_and_nothing_else(value):
    rendered = commonmark_html("x " + mdsafe.code(value) + " y\n")
    assert _tags(rendered) <= {"p", "code"}, rendered


def test_only_http_and_https_become_links():
    for url in ("javascript:window.__pwned=1", "JaVaScRiPt:alert(1)", " javascript:alert(1)", "data:text/html,<b>x",
                "vbscript:msgbox", "file:///etc/passwd", "//evil.example/x", "http:/no-host"):  # fmt: skip
        rendered = commonmark_html(mdsafe.link("open", url) + "\n")
        assert "<a" not in rendered and "open" in rendered, (url, rendered)
    rendered = commonmark_html(mdsafe.link("dash <b>", "https://grafana.example/d/x?from=now-1h&to=now (copy)") + "\n")
    assert rendered.count("<a ") == 1 and "<b>" not in rendered
    (href,) = re.findall(r'href="([^"]*)"', rendered)
    assert href.startswith("https://grafana.example/d/x?from=now-1h") and " " not in href and "(" not in href


def test_the_hostile_payloads_survive_as_text():
    rendered = commonmark_html(mdsafe.text(EVERYTHING) + "\n\n" + mdsafe.fence(FENCE_BREAK) + "\n")
    assert _tags(rendered) <= {"p", "pre", "code"}
    assert "&lt;script&gt;window.__pwned = 1" in rendered and "[click me](javascript:" in rendered
