"""The postmortem of an incident an attacker described, as Markdown (rendered as CommonMark) and as HTML.

Labels, annotations, the incident title, step outputs, a Slack display name and a denial reason carry HTML,
`javascript:` links and code-fence breakers (tests/support/hostile.py): a browser runs none of it.
"""

from __future__ import annotations

import os
import re

import pytest

from runbot.postmortem import render_postmortem
from tests.support.chromium import chromium_binary
from tests.support.hostile import (
    FENCE_BREAK,
    IMG,
    browse,
    commonmark_html,
    render_markdown_in_chromium,
)

pytestmark = pytest.mark.skipif(chromium_binary() is None and not os.environ.get("CI"),
                                reason="needs Chromium (apt-get install chromium)")  # fmt: skip



def test_the_markdown_postmortem_runs_no_script_has_no_foreign_link_and_keeps_outputs_fenced(hostile, tmp_path):
    md = render_postmortem(hostile.rt.db, hostile.incident_id, "md")
    page = render_markdown_in_chromium(tmp_path, md)
    assert page["title"] == "clean" and page["pwned"] is None
    assert page["scripts"] == 0 and page["handlers"] == 0 and page["srcs"] == []
    assert all(h.startswith(("http://", "https://")) for h in page["hrefs"]), page["hrefs"]
    assert not {"img", "svg", "script", "iframe", "a"} & set(page["tags"]), page["tags"]
    assert IMG in page["text"]  # shown as text
    # the step output that tries to close its fence stays inside one code block, whole
    rendered = commonmark_html(md)
    blocks = re.findall(r"<pre><code[^>]*>(.*?)</code></pre>", rendered, re.S)
    assert any("~~~" in b and "````````" in b and "&lt;script&gt;" in b for b in blocks)
    assert md.startswith("# Postmortem: \\<img src=x")  # the title is escaped too


def test_a_custom_template_that_forgets_to_escape_is_escaped_anyway(hostile, tmp_path):
    tpl = tmp_path / "careless.md.j2"
    tpl.write_text("# {{ incident.title }}\n\n```\n{{ alerts[0].annotations.description }}\n```\n\n"
                   "{{ labels.payload }} {{ alerts[0].generator_url|link(alerts[0].generator_url) }}\n")  # fmt: skip
    md = render_postmortem(hostile.rt.db, hostile.incident_id, "md", tpl)
    page = render_markdown_in_chromium(tmp_path, md)
    assert page["pwned"] is None and page["title"] == "clean" and page["hrefs"] == [] and page["handlers"] == 0
    assert "<a" not in commonmark_html(md)


def test_the_html_postmortem_escapes_every_hostile_value(hostile, tmp_path):
    page = browse(tmp_path, render_postmortem(hostile.rt.db, hostile.incident_id, "html"), "pm.html")
    assert page["pwned"] is None and page["title"].startswith("Postmortem: <img")
    assert page["scripts"] == 0 and page["handlers"] == 0 and page["srcs"] == [] and page["hrefs"] == []
    assert FENCE_BREAK.splitlines()[1] in page["text"]
