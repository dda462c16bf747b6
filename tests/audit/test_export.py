"""Audit export: every format carries exactly the selected events, in chain order, with secrets masked."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest
from sqlalchemy import select

from runbot.audit import log as audit
from runbot.audit.export import CSV_COLUMNS, _csv_fast, csv_row, event_line, export_chunks, write_export
from runbot.audit.records import (
    ExportFilter,
    approval_votes,
    iter_raw,
    normalize,
    parse_time,
    raw_approval_ids,
    run_versions,
    view,
)
from tests.support.incident_story import ALICE, BOB, CAROL, SECRET

# What the incident's run must show, in this order (a subsequence: the engine may record more in between).
STORY = [
    ("run.created", None), ("run.started", None), ("step.succeeded", "error_graph"), ("step.succeeded", "health"),
    ("approval.requested", "rollback"), ("approval.vote", "rollback"), ("approval.approved", "rollback"),
    ("step.started", "rollback"), ("step.succeeded", "rollback"), ("step.succeeded", "rollback__verify"),
    ("approval.requested", "restart_all"), ("approval.denied", "restart_all"), ("step.skipped", "restart_all"),
    ("run.finished", None),
]  # fmt: skip


def export(rt, fmt, **flt):
    return "".join(export_chunks(rt.db, fmt, ExportFilter(**flt)))


def db_events(rt, **where):
    q = select(audit.EVENTS).order_by(audit.EVENTS.c.seq)
    for k, v in where.items():
        q = q.where(audit.EVENTS.c[k] == v)
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def is_subsequence(wanted, seen):
    it = iter(seen)
    return all(any(w == s for s in it) for w in wanted)


def jsonl_events(text):
    lines = [json.loads(x) for x in text.splitlines()]
    assert lines[-1]["kind"] == "head"
    return lines[:-1], lines[-1]


class Rows(HTMLParser):
    """Timeline rows of the HTML report: (seq, action, css class), plus every URL-bearing attribute."""

    def __init__(self):
        super().__init__()
        self.rows, self.urls, self.tags = [], [], set()
        self._cells, self._in_events, self._row_class, self._cell = None, False, "", None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "poster", "data") and v]
        if tag == "table" and a.get("id") == "events":
            self._in_events = True
        elif tag == "tr" and self._in_events and "ev" in (a.get("class") or "").split():
            self._cells, self._row_class = [], a.get("class") or ""
        elif tag == "td" and self._cells is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cells is not None and self._cell is not None:
            self._cells.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._cells is not None:
            self.rows.append((int(self._cells[0]), self._cells[3], self._row_class))
            self._cells = None
        elif tag == "table":
            self._in_events = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_every_format_holds_exactly_the_incidents_events_in_chain_order(story_on):
    rt = story_on.rt
    expected = db_events(rt, incident_id=story_on.incident_id)
    seqs = [e["seq"] for e in expected]
    assert is_subsequence(STORY, [(e["action"], e["step_id"]) for e in expected])
    assert not any(e["run_id"] == story_on.noise_run_id for e in expected)

    events, head = jsonl_events(export(rt, "jsonl", incident_id=story_on.incident_id))
    assert [(e["seq"], e["action"], e["actor"], e["hash"]) for e in events] == \
        [(e["seq"], e["action"], e["actor"], e["hash"]) for e in expected]
    assert head["count"] == len(expected) and head["filters"]["incident"] == story_on.incident_id
    assert head["complete"] is False

    rows = list(csv.DictReader(io.StringIO(export(rt, "csv", incident_id=story_on.incident_id), newline="")))
    assert [int(r["seq"]) for r in rows] == seqs
    assert [r["action"] for r in rows] == [e["action"] for e in expected]
    assert [r["hash"] for r in rows] == [e["hash"] for e in expected]

    md = export(rt, "md", incident_id=story_on.incident_id)
    md_rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[0][2:]) for r in md_rows] == seqs
    assert [r[3] for r in md_rows] == [e["action"] for e in expected]

    page = Rows()
    page.feed(export(rt, "html", incident_id=story_on.incident_id))
    assert [(s, a) for s, a, _ in page.rows] == [(e["seq"], e["action"]) for e in expected]


def test_the_complete_export_is_the_whole_chain_and_filters_narrow_it(story_on):
    story = story_on
    rt = story.rt
    everything = db_events(rt)
    events, head = jsonl_events(export(rt, "jsonl"))
    assert [e["seq"] for e in events] == [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    assert head["complete"] is True and head["chain_head"] == {"seq": everything[-1]["seq"], "hash": everything[-1]["hash"]}

    by_run, _ = jsonl_events(export(rt, "jsonl", run_id=story.noise_run_id))
    assert by_run and {e["run_id"] for e in by_run} == {story.noise_run_id}
    by_book, _ = jsonl_events(export(rt, "jsonl", runbook="housekeeping-check"))
    assert [e["seq"] for e in by_book] == [e["seq"] for e in by_run]
    by_actor, _ = jsonl_events(export(rt, "jsonl", actor=CAROL[0]))
    assert [(e["action"], e["step_id"]) for e in by_actor] == [("approval.denied", "restart_all")]
    middle = everything[len(everything) // 2]["ts"]
    since, _ = jsonl_events(export(rt, "jsonl", since=middle))
    until, _ = jsonl_events(export(rt, "jsonl", until=middle))
    assert sorted(e["seq"] for e in since + until) == [e["seq"] for e in everything]


def test_jsonl_lines_are_the_hashed_content_in_canonical_form(story):
    events, _ = jsonl_events(export(story.rt, "jsonl"))
    for e in events:
        assert audit.event_hash(e) == e["hash"]
        assert event_line(e) == json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert e["ts"].endswith("Z") and parse_time(e["ts"]).tzinfo is not None


def test_csv_opens_with_the_stdlib_reader_and_names_actors_decisions_and_approvers(story):
    text = export(story.rt, "csv", incident_id=story.incident_id)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    rows = [dict(zip(header, r, strict=True)) for r in reader]
    assert tuple(header) == CSV_COLUMNS
    approved = next(r for r in rows if r["action"] == "approval.approved")
    assert approved["decision"] == "approve" and approved["actor_kind"] == "slack"
    assert approved["approvers"] == f"{ALICE[1]} ({ALICE[0]}): approve; {BOB[1]} ({BOB[0]}): approve"
    assert approved["actor_name"] == BOB[1] and approved["runbook"] == "api-high-error-rate"
    assert len(approved["runbook_version"]) == 12
    denied = next(r for r in rows if r["action"] == "approval.denied")
    assert denied["decision"] == "deny" and denied["approvers"] == f"{CAROL[1]} ({CAROL[0]}): deny"
    assert "too broad" in denied["details"]
    requested = next(r for r in rows if r["action"] == "approval.requested" and r["step_id"] == "rollback")
    params = json.loads(requested["parameters"])
    assert params["headers"]["Authorization"] == "Bearer ****(kv/deployer#token)"
    assert requested["approvers"] == f"user:{ALICE[0]}; user:{BOB[0]}"  # every kind of approver, named by kind
    finished = rows[-1]
    assert finished["action"] == "run.finished" and finished["outcome"] == "succeeded"
    assert all(r["time"].endswith("Z") and r["time"][10] == "T" for r in rows)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "md", "html"])
def test_no_format_carries_a_secret_value(story, fmt):
    import base64

    text = export(story.rt, fmt)
    for form in (SECRET, base64.b64encode(SECRET.encode()).decode()):
        assert form not in text


def test_human_formats_mask_secret_looking_values_the_runbook_wrote_in_clear(story):
    rt = story.rt
    with rt.db.tx() as conn:
        audit.append(conn, [audit.Event("step.started", run_id="r-x", step_id="call", details={
            "params": {"headers": {"X-Api-Key": "literal-key-123"}, "url": "https://x"}, "password": "hunter22"})])
    for fmt in ("csv", "md", "html"):
        text = export(rt, fmt, run_id="r-x")
        mask = "\\*\\*\\*\\*" if fmt == "md" else "****"  # Markdown escapes the asterisks (they render as ****)
        assert "literal-key-123" not in text and "hunter22" not in text and mask in text
    assert "literal-key-123" in export(rt, "jsonl", run_id="r-x")  # JSONL is the record as hashed, to verify it


def test_the_html_report_is_one_file_with_no_external_references(story):
    text = export(story.rt, "html")
    page = Rows()
    page.feed(text)
    assert page.urls == []  # no src/href at all: styles, script and data are inline
    assert "link" not in page.tags and "iframe" not in page.tags and "img" not in page.tags
    assert "@import" not in text and "url(" not in text
    assert text.count("<script>") == 1 and "<script src" not in text
    failures = [(a, c) for _, a, c in page.rows if "fail" in c.split()]
    assert ("approval.denied", "ev fail") in failures
    assert all(a != "step.succeeded" for a, _ in failures)
    assert 'id="summary"' in text and 'id="approvals"' in text and "Summary per incident" in text


def test_the_chain_head_is_taken_first_so_a_growing_chain_exports_a_consistent_prefix(story):
    rt = story.rt
    chunks = export_chunks(rt.db, "jsonl", ExportFilter())
    first = next(chunks)
    with rt.db.tx() as conn:
        audit.append(conn, [audit.Event("freeze.on", actor="U024ALICE", details={"reason": "during export"})])
    rest = "".join(chunks)
    events, head = jsonl_events(first + rest)
    assert all(e["action"] != "freeze.on" for e in events)
    assert head["chain_head"]["seq"] == events[-1]["seq"]


def test_write_export_reports_what_it_wrote(story, tmp_path):
    out = tmp_path / "all.csv"
    with out.open("w", encoding="utf-8", newline="") as f:
        tally = write_export(story.rt.db, "csv", f)
    assert tally.count == len(db_events(story.rt)) == sum(1 for _ in csv.reader(out.open(newline=""))) - 1


def test_time_filters_accept_iso_dates_and_durations():
    now = parse_time("2026-03-01T12:00:00Z")
    assert parse_time("24h", now=now) == parse_time("2026-02-28T12:00:00Z")
    assert parse_time("2026-03-01") == parse_time("2026-03-01T00:00:00+00:00")
    assert parse_time("2026-03-01T14:00:00+02:00") == now
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_the_fast_csv_path_agrees_with_the_reference_view(story):
    """CSV rows are built straight from driver rows for speed; they must say what `view` says."""
    rt = story.rt
    with rt.db.tx() as conn:
        audit.append(conn, [
            audit.Event("step.failed", actor="cli:o'brien, pat", run_id=story.run_id, step_id="health",
                        details={"error": 'HTTP 503 "upstream" — retry\nlater', "token": "abc-literal"}),
            audit.Event("step.decided", actor="U024ALICE", run_id=story.run_id, step_id="rollback", outcome="skip",
                        details={"previous": "in_doubt"}),
        ])  # fmt: skip
    checked = 0
    for rows in iter_raw(rt.db, ExportFilter(), 10**9):
        votes = approval_votes(rt.db, [], raw_approval_ids(rows))
        versions = run_versions(rt.db, {r[4] for r in rows if not r[8]})
        for r in rows:
            (fast,) = csv.reader(io.StringIO(_csv_fast(r, votes, versions), newline=""))
            ref = [str(x) for x in csv_row(view(normalize(r), votes, versions))]
            details = CSV_COLUMNS.index("details")
            assert fast[:details] + fast[details + 1:] == ref[:details] + ref[details + 1:]
            assert (json.loads(fast[details]) if fast[details] else {}) == (json.loads(ref[details]) if ref[details] else {})
            checked += 1
    assert checked > 25
