"""A JSONL export verifies offline; one changed byte, a removed or added line, or a cut-off end does not."""

from __future__ import annotations

import json

import pytest

from runbot.audit.export import export_chunks, verify_export_file
from runbot.audit.records import ExportFilter
from runbot.cli.main import main


def write(tmp_path, rt, name="export.jsonl", **flt):
    path = tmp_path / name
    path.write_text("".join(export_chunks(rt.db, "jsonl", ExportFilter(**flt))), encoding="utf-8", newline="")
    return path


def lines_of(path):
    return path.read_bytes().split(b"\n")[:-1]


def save(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("scope", ["complete", "incident"])
def test_an_untouched_export_verifies_offline(story_on, tmp_path, scope):
    flt = {"incident_id": story_on.incident_id} if scope == "incident" else {}
    path = write(tmp_path, story_on.rt, **flt)
    result = verify_export_file(path)
    head = json.loads(lines_of(path)[-1])
    assert result.ok, result.problem
    assert result.count == head["count"] == len(lines_of(path)) - 1
    assert (result.head_seq, result.head_hash) == (head["chain_head"]["seq"], head["chain_head"]["hash"])


@pytest.mark.parametrize("scope", ["complete", "incident"])
def test_changing_any_single_byte_of_a_record_fails_verification(story, tmp_path, scope):
    flt = {"incident_id": story.incident_id} if scope == "incident" else {}
    path = write(tmp_path, story.rt, **flt)
    original = lines_of(path)
    victim = len(original) // 2  # a record in the middle (the last line is the head record)
    record = original[victim]
    for i in range(len(record)):
        changed = record[:i] + bytes([record[i] ^ 0x01]) + record[i + 1:]  # e.g. a->`, 0->1, "->#, :->;
        save(path, [*original[:victim], changed, *original[victim + 1:]])
        result = verify_export_file(path)
        assert not result.ok, f"byte {i} ({chr(record[i])!r}) changed unnoticed"


def test_the_problem_names_the_modified_event(story, tmp_path):
    path = write(tmp_path, story.rt)
    lines = lines_of(path)
    rec = json.loads(lines[4])
    lines[4] = lines[4].replace(b'"actor":"system"', b'"actor":"mallory"')
    save(path, lines)
    result = verify_export_file(path)
    assert not result.ok and result.broken_seq == rec["seq"] and "modified" in result.problem


@pytest.mark.parametrize("scope", ["complete", "incident"])
def test_removing_the_last_record_is_caught_by_the_head_record(story, tmp_path, scope):
    flt = {"incident_id": story.incident_id} if scope == "incident" else {}
    path = write(tmp_path, story.rt, **flt)
    lines = lines_of(path)
    save(path, lines[:-2] + lines[-1:])
    result = verify_export_file(path)
    assert not result.ok and "removed" in result.problem


def test_removing_a_middle_record_or_the_head_fails(story, tmp_path):
    path = write(tmp_path, story.rt, incident_id=story.incident_id)
    lines = lines_of(path)
    save(path, lines[:3] + lines[4:])
    assert not verify_export_file(path).ok
    save(path, lines[:-1])
    result = verify_export_file(path)
    assert not result.ok and "no head record" in result.problem


def test_a_line_appended_after_the_head_fails(story, tmp_path):
    path = write(tmp_path, story.rt)
    lines = lines_of(path)
    save(path, [*lines, lines[2]])
    result = verify_export_file(path)
    assert not result.ok and "follows the head" in result.problem


def test_a_rewritten_head_record_fails(story, tmp_path):
    path = write(tmp_path, story.rt)
    lines = lines_of(path)
    head = json.loads(lines[-1])
    head["count"] -= 1
    lines[-1] = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    save(path, lines)
    result = verify_export_file(path)
    assert not result.ok and "head record was modified" in result.problem


def test_truncating_consistently_is_caught_only_by_an_anchor_kept_elsewhere(story, tmp_path):
    """Whoever rewrites the file completely can make it self-consistent: the anchored head is the defence."""
    path = write(tmp_path, story.rt)
    anchored = verify_export_file(path)
    from runbot.audit import log as audit

    with story.rt.db.tx() as conn:
        audit.append(conn, [audit.Event("freeze.on", actor="U024ALICE")])
    later = verify_export_file(write(tmp_path, story.rt, "later.jsonl"))
    assert anchored.ok and later.ok and later.head_seq == anchored.head_seq + 1


def test_cli_verify_file_exit_codes(story, tmp_path, monkeypatch, capsys):
    path = write(tmp_path, story.rt)
    monkeypatch.setattr("sys.argv", ["runbot", "audit", "verify", "--file", str(path)])
    main()  # returns normally: exit status 0
    assert "audit chain OK" in capsys.readouterr().out
    lines = lines_of(path)
    save(path, lines[:-2] + lines[-1:])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1 and "BROKEN" in capsys.readouterr().err


def test_a_file_that_is_not_an_export_fails_cleanly(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_bytes(b"\xff\xfe not utf-8")
    assert not verify_export_file(bad).ok
    bad.write_text('{"hello": "world"}\n')
    assert "not in the canonical form" in verify_export_file(bad).problem
    assert "cannot read" in verify_export_file(tmp_path / "missing.jsonl").problem
