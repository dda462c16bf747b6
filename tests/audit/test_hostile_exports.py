"""Exports of an incident an attacker described: no spreadsheet formula, no script, no foreign link survives.

The alert's labels and annotations, the step outputs templated from them, a Slack display name and a denial
reason carry HTML, `javascript:` links, fence breakers and formulas (tests/support/hostile.py).
"""

from __future__ import annotations

import csv
import io
import os

import pytest

from runbot.audit.export import CSV_COLUMNS, FORMULA_START, export_chunks
from runbot.audit.records import ExportFilter
from tests.support.chromium import chromium_binary
from tests.support.hostile import (
    FORMULAS,
    browse,
    commonmark_html,
    render_markdown_in_chromium,
)

needs_chromium = pytest.mark.skipif(chromium_binary() is None and not os.environ.get("CI"),
                                    reason="needs Chromium (apt-get install chromium)")  # fmt: skip



def export(rt, fmt, **flt):
    return "".join(export_chunks(rt.db, fmt, ExportFilter(**flt)))


def test_no_csv_cell_starts_like_a_formula_and_the_values_are_kept_as_text(hostile):
    text = export(hostile.rt, "csv")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(CSV_COLUMNS) and len(rows) > 5
    assert all(len(r) == len(CSV_COLUMNS) for r in rows), "a value opened a cell of its own"
    cells = [c for r in rows for c in r]
    assert not [c for c in cells if c.startswith(FORMULA_START)]
    neutralised = [c for c in cells if c.startswith("'") and c[1:2] in FORMULA_START]
    assert neutralised, "the hostile values should be in the export, neutralised"
    assert any(c.startswith("'" + FORMULAS[3]) for c in cells)  # the display name, verbatim behind the quote
    assert "\"'@SUM" in text  # a neutralised cell is also quoted in the file


def test_csv_stays_standard_for_ordinary_values(hostile):
    rows = list(csv.DictReader(io.StringIO(export(hostile.rt, "csv", run_id=hostile.run_id), newline="")))
    created = next(r for r in rows if r["action"] == "run.created")
    assert created["runbook"] == "hostile" and created["actor_kind"] == "system" and created["seq"].isdigit()


@needs_chromium
def test_the_markdown_export_rendered_as_commonmark_runs_no_script_and_links_nowhere(hostile, tmp_path):
    md = export(hostile.rt, "md")
    assert "\\<script\\>window.\\_\\_pwned" in md  # the payloads are in the export, escaped
    page = render_markdown_in_chromium(tmp_path, md)
    assert page["title"] == "clean" and page["pwned"] is None
    assert page["scripts"] == 0 and page["handlers"] == 0 and page["srcs"] == []
    assert all(h.startswith(("http://", "https://")) for h in page["hrefs"]), page["hrefs"]
    assert set(page["tags"]) <= {"h1", "p", "table", "thead", "tbody", "tr", "th", "td", "code", "strong"}, page["tags"]
    assert "<script>window.__pwned = 1" in page["text"]  # shown, not run
    assert "<table>" in commonmark_html(md)  # still one readable table


@needs_chromium
def test_the_html_report_of_hostile_events_runs_only_its_own_script(hostile, tmp_path):
    page = browse(tmp_path, export(hostile.rt, "html"), "report.html")
    assert page["title"].startswith("runbot audit report") and page["pwned"] is None
    assert page["scripts"] == 1 and page["handlers"] == 0 and page["srcs"] == [] and page["hrefs"] == []
    assert "svg" not in page["tags"] and "img" not in page["tags"]
    assert "<script>window.__pwned = 1" in page["text"]
