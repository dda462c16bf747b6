"""The `runbot` command as an on-call engineer uses it: clear output, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_runbook

RUNBOT = str(Path(sys.executable).with_name("runbot"))


@pytest.fixture
def env(tmp_path, runbooks_dir):
    write_runbook(runbooks_dir, "disk", """
        name: disk
        description: disk filling up
        match:
          - alertname = "DiskFull"
          - env != "dev"
        params:
          keep_days: {type: integer, default: 7}
        steps:
          - id: look
            type: log
            with: {message: "checking {{ alert.labels.instance | default('?') }}"}
          - id: clean
            type: log
            risk: high
            approval: {approvers: {slack_usergroups: [sre]}, timeout: 10m}
            with: {message: "cleaning logs older than {{ params.keep_days }} days"}
    """)
    e = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}, "RUNBOT_CONFIG": "none"}
    e.update(RUNBOT_DATA_DIR=str(tmp_path / "data"), RUNBOT_RUNBOOKS_DIR=str(runbooks_dir))
    return e


def rb(env, *args, ok=True):
    out = subprocess.run([RUNBOT, *args], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    if ok is not None:
        assert (out.returncode == 0) is ok, out.stdout + out.stderr
    return out


def test_match_explains_matches_and_misses(env, tmp_path):
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps({"version": "4", "alerts": [
        {"labels": {"alertname": "DiskFull", "env": "prod", "instance": "db1"}},
        {"labels": {"alertname": "DiskFull", "env": "dev"}}]}))
    out = rb(env, "match", str(alert)).stdout
    assert "MATCH     disk" in out
    assert 'no match  disk: env!="dev" does not hold: env is "dev"' in out


def test_manual_run_waits_for_approval_then_break_glass_approval_finishes_it(env, tmp_path):
    env = {**env, "RUNBOT_APPROVAL_CLI_ANY_HOST_USER": "true"}  # the step lists no cli_users
    out = rb(env, "run", "disk", "--param", "keep_days=3").stdout
    run_id = out.split()[1]
    assert "waiting" in out and f"runbot runs approve {run_id} --step clean" in out
    assert "approval" in rb(env, "runs", "show", run_id[:6]).stdout
    refused = rb(env, "runs", "approve", run_id, "--as", "alice", ok=False).stderr  # you started it yourself
    assert "refused: you requested this run and the runbook does not allow self-approval" in refused
    allowed = write_runbook(Path(env["RUNBOT_RUNBOOKS_DIR"]), "disk", (Path(env["RUNBOT_RUNBOOKS_DIR"]) / "disk.yaml")
                            .read_text().replace("timeout: 10m}", "timeout: 10m, allow_self_approval: true}"))
    assert "allow_self_approval" in allowed.read_text()
    run_id = rb(env, "run", "disk", "--param", "keep_days=3").stdout.split()[1]
    rb(env, "runs", "approve", run_id, "--as", "alice")
    follow = rb(env, "runs", "resume", run_id).stdout
    assert "cleaning logs older than 3 days" in follow and "succeeded" in follow
    listing = rb(env, "runs", "list").stdout
    assert run_id in listing and "succeeded" in listing
    rb(env, "audit", "verify")


def test_dry_run_executes_nothing(env, tmp_path):
    out = rb(env, "run", "disk", "--dry-run").stdout
    assert "nothing is executed" in out and "approval: 1 of group:sre" in out
    assert "cleaning logs older than 7 days" in out
    assert not (tmp_path / "data" / "runbot.db").exists()  # not even a database was created


@pytest.mark.parametrize("args,message", [
    (["run", "nosuch"], "no runbook named 'nosuch'"),
    (["run", "disk", "--param", "keep_days=lots"], "expected integer"),
    (["run", "disk", "--param", "oops"], "is not k=v"),
    (["runs", "show", "zzz"], "no run 'zzz'"),
    (["runs", "decide", "zzz", "s", "maybe"], "unknown decision 'maybe'"),
    (["frobnicate"], "No such command"),
])
def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(env, args, message):
    rb(env, "db", "upgrade")
    out = rb(env, *args, ok=False)
    assert message in out.stderr
    assert out.stderr.startswith("error:") or "Usage" in out.stderr
