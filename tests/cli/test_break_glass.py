"""`runbot runs approve|deny` as an attacker on the host tries it: the host user is the identity, `--as` is not.

Runs are created by an alert (requester `alertmanager`), then approved from the CLI in a subprocess, the
way an on-call engineer (or a curious local user) would. Every refusal is one line plus a hint, a non-zero
exit, an `approval.refused` audit event, and the step does not run.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from runbot.app import build_runtime
from runbot.audit.log import EVENTS
from runbot.domain import RunStatus
from runbot.engine.state import STEPS, VOTES
from runbot.settings import Settings
from tests.conftest import write_runbook
from tests.engine.helpers import drive

RUNBOT = str(Path(sys.executable).with_name("runbot"))
ME = pwd.getpwuid(os.getuid()).pw_name

BOOK = """
    name: clean
    description: disk filling up
    match: ['alertname = "DiskFull"']
    steps:
      - id: look
        type: log
        with: {message: "looking"}
      - id: clean
        type: log
        risk: high
        approval: {approvers: {cli_users: CLI_USERS}, min_approvals: MIN, timeout: 10m}
        with: {message: "cleaning"}
"""


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'runbot.db'}"


@pytest.fixture
def host(request, tmp_path, runbooks_dir):
    """Each CLI call is a subprocess of a few seconds: SQLite here, and PostgreSQL where `db_url` is asked for."""
    db_url = request.getfixturevalue("db_url" if "db_url" in request.fixturenames else "sqlite_url")

    def make(cli_users: list[str], min_approvals: int = 1, **env: str):
        write_runbook(runbooks_dir, "clean", BOOK.replace("CLI_USERS", "[" + ", ".join(cli_users) + "]")
                      .replace("MIN", str(min_approvals)))  # fmt: skip
        settings = Settings(data_dir=tmp_path / "data", runbooks_dir=runbooks_dir, database_url=db_url)
        rt = build_runtime(settings)
        run_id = rt.engine.create_run(rt.catalog.get("clean"), alert={"labels": {"alertname": "DiskFull"}},
                                      requester="alertmanager")  # fmt: skip
        assert drive(rt, run_id) is RunStatus.WAITING
        e = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}, "RUNBOT_CONFIG": "none"}
        e.update(RUNBOT_DATA_DIR=str(tmp_path / "data"), RUNBOT_RUNBOOKS_DIR=str(runbooks_dir),
                 RUNBOT_DATABASE_URL=db_url, USER="alice", LOGNAME="alice", **env)  # fmt: skip
        return rt, run_id, e

    made = []

    def tracked(*a, **kw):
        got = make(*a, **kw)
        made.append(got[0])
        return got

    yield tracked
    for rt in made:
        rt.close()


def rb(env, *args):
    out = subprocess.run([RUNBOT, *args], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def refused(rt, run_id, out) -> str:
    assert out.returncode != 0, out.stdout
    assert out.stderr.startswith("error: refused: "), out.stderr
    assert "hint:" in out.stderr or out.stderr.count("\n") == 2
    with rt.db.read() as conn:
        assert conn.execute(select(STEPS.c.id).where(STEPS.c.run_id == run_id, STEPS.c.step_id == "clean")).first() is None
        events = conn.execute(select(EVENTS.c.actor, EVENTS.c.details).where(EVENTS.c.action == "approval.refused")).all()
    assert events and events[-1].details["user_id"] == f"cli:{ME}"
    assert rt.engine.pending_approvals(run_id)
    return out.stderr


def test_as_a_name_in_cli_users_does_not_make_you_that_user(host) -> None:
    """Limited to `alice`; the host user is someone else, whatever --as, $USER or $LOGNAME say."""
    if ME == "alice":
        pytest.skip("runs as alice")
    rt, run_id, env = host(["alice"])
    for args in (["--as", "alice"], ["--as", "mallory"]):
        err = refused(rt, run_id, rb(env, "runs", "approve", run_id, *args))
        assert f"host user '{ME}' is not in this step's cli_users (alice)" in err
    assert f"checked against the host user running runbot ({ME})" in err


def test_deny_is_held_to_the_same_rule(host) -> None:
    if ME == "alice":
        pytest.skip("runs as alice")
    rt, run_id, env = host(["alice"])
    refused(rt, run_id, rb(env, "runs", "deny", run_id, "--as", "alice", "--reason", "no"))


def test_no_cli_users_means_no_break_glass_unless_configured(host) -> None:
    rt, run_id, env = host([])
    assert "RUNBOT_APPROVAL_CLI_ANY_HOST_USER" in refused(rt, run_id, rb(env, "runs", "approve", run_id))
    ok = rb({**env, "RUNBOT_APPROVAL_CLI_ANY_HOST_USER": "true"}, "runs", "approve", run_id)
    assert ok.returncode == 0 and "approved (1/1)" in ok.stdout, ok.stderr


def test_two_as_names_from_one_host_user_are_one_approval(host, db_url) -> None:
    rt, run_id, env = host([ME], min_approvals=2)
    first = rb(env, "runs", "approve", run_id, "--as", "alice")
    assert first.returncode == 0 and "recorded (1/2 approvals so far)" in first.stdout, first.stderr
    err = refused(rt, run_id, rb(env, "runs", "approve", run_id, "--as", "bob"))
    assert "you have already decided on this approval" in err
    with rt.db.read() as conn:
        votes = conn.execute(select(VOTES.c.user_id, VOTES.c.on_behalf_of, VOTES.c.person)).all()
        approved = conn.execute(select(EVENTS.c.actor, EVENTS.c.details).where(EVENTS.c.action == "approval.vote")).one()
    assert [tuple(v) for v in votes] == [(f"cli:{ME}", "alice", f"host:{ME}")]  # --as recorded, not the identity
    assert approved.actor == f"cli:{ME} for alice (break-glass)" and approved.details["on_behalf_of"] == "alice"
    assert f"votes {ME} (cli:{ME}) for alice:approve" in rb(env, "runs", "show", run_id).stdout
