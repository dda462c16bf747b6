"""`runbot audit export|head|summary`, `runbot postmortem` and `runbot retention apply` from the shell."""

from __future__ import annotations

import csv
import json

from runbot.audit.summary import summarize
from tests.support.incident_story import ALICE, BOB, CAROL, SECRET


def test_export_to_a_file_then_verify_it(cli, story, tmp_path):
    out = tmp_path / "incident.jsonl"
    code, _, err = cli("audit", "export", "--incident", story.incident_id, "-o", str(out))
    assert code == 0 and "exported" in err and f"runbot audit verify --file {out}" in err
    assert not out.with_name("incident.jsonl.partial").exists()
    code, stdout, _ = cli("audit", "verify", "--file", str(out))
    assert code == 0 and "audit chain OK" in stdout


def test_export_to_stdout_in_csv_with_filters(cli, story):
    code, stdout, _ = cli("audit", "export", "--format", "csv", "--actor", CAROL[0], "--since", "1h")
    rows = list(csv.DictReader(stdout.splitlines()))
    assert code == 0 and [r["action"] for r in rows] == ["approval.denied"]


def test_export_rejects_what_it_cannot_do(cli):
    code, _, err = cli("audit", "export", "--format", "pdf")
    assert code == 2 and "unknown format 'pdf'" in err
    code, _, err = cli("audit", "export", "--since", "last week")
    assert code == 1 and "--since: invalid time" in err


def test_head_prints_and_checks_the_anchor(cli, tmp_path):
    code, stdout, _ = cli("audit", "head")
    seq, digest = stdout.split()
    assert code == 0 and int(seq) > 0 and len(digest) == 64
    assert cli("audit", "head", "--check", f"{seq}:{digest}")[0] == 0
    code, _, err = cli("audit", "head", "--check", f"{seq}:{'0' * 64}")
    assert code == 1 and "history was rewritten" in err
    export = tmp_path / "later.jsonl"
    cli("audit", "export", "-o", str(export))
    assert cli("audit", "head", "--check", f"3:{line_hash(export, 3)}", "--file", str(export))[0] == 0
    code, _, err = cli("audit", "head", "--check", f"3:{'a' * 64}", "--file", str(export))
    assert code == 1 and "history was rewritten" in err


def line_hash(path, seq):
    return next(json.loads(x)["hash"] for x in path.read_text().splitlines() if json.loads(x).get("seq") == seq)


def test_postmortem_command_writes_markdown_or_html(cli, story, tmp_path):
    code, stdout, _ = cli("postmortem", story.incident_id)
    assert code == 0 and stdout.startswith("# Postmortem:") and SECRET not in stdout
    out = tmp_path / "pm.html"
    code, _, err = cli("postmortem", story.incident_id, "--format", "html", "--output", str(out))
    assert code == 0 and out.read_text().startswith("<!DOCTYPE html>")
    code, _, err = cli("postmortem", "inc-nope")
    assert code == 1 and "no incident 'inc-nope'" in err


def test_retention_apply_says_what_it_did(cli, monkeypatch):
    code, stdout, _ = cli("retention", "apply")
    assert code == 0 and "no retention configured" in stdout
    monkeypatch.setenv("RUNBOT_RETENTION_RUNS_DAYS", "30")
    code, stdout, _ = cli("retention", "apply", "--dry-run")
    assert code == 0 and "would delete 0 run(s)" in stdout


def test_summary_names_decisions_approvers_and_failures(story, cli):
    text = summarize(story.rt.db, story.run_id)
    assert text.startswith(f"Audit trail (run {story.run_id}):")
    assert f"approved rollback ({story.run_id}) by {ALICE[1]} ({ALICE[0]}): approve, {BOB[1]} ({BOB[0]}): approve" in text
    assert f"denied restart_all ({story.run_id}) by {CAROL[1]} ({CAROL[0]}): deny" in text
    assert "failures and refusals: 1" in text and "Chain head: #" in text
    code, stdout, _ = cli("audit", "summary", "--incident", story.incident_id)
    assert code == 0 and "decisions: 2" in stdout
    assert json.dumps(SECRET) not in text
