"""The CLI's conventions, as a script or a tired human relies on them: exit codes 0/1/2, one error line plus a
hint for every bad invocation and bad setting, --version, --debug anywhere, --output json, the project config
file found from any directory of the checkout, and no database created by a command that only reads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_runbook

RUNBOT = str(Path(sys.executable).with_name("runbot"))

RUNBOOK = """
    name: disk
    match: ['alertname = "DiskFull"']
    steps:
      - {id: look, type: log, with: {message: "checking {{ alert.labels.instance | default('?') }}"}}
"""


@pytest.fixture
def env(tmp_path: Path, runbooks_dir: Path) -> dict[str, str]:
    write_runbook(runbooks_dir, "disk", RUNBOOK)
    e = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    e.update(RUNBOT_CONFIG="none", RUNBOT_DATA_DIR=str(tmp_path / "data"), RUNBOT_RUNBOOKS_DIR=str(runbooks_dir))
    return e


def rb(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([RUNBOT, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def one_error_line_and_a_hint(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), stderr


# (arguments, extra environment, exit code, the error line contains)
BAD = [
    (["frobnicate"], {}, 2, "No such command 'frobnicate'"),
    (["runs", "list", "--bogus"], {}, 2, "No such option: --bogus"),
    (["runs", "show"], {}, 2, "Missing argument"),
    (["runs", "list", "--output", "yaml"], {}, 2, "use table or json"),
    (["runs", "decide", "zzz", "s", "maybe"], {}, 2, "unknown decision 'maybe'"),
    (["--config", "/nonexistent/runbot.yaml", "runs", "list"], {}, 1, "config file /nonexistent/runbot.yaml does not exist"),
    (["runs", "list"], {"RUNBOT_RUNBOOKS_DRI": "x"}, 1, "unknown environment variable RUNBOT_RUNBOOKS_DRI (did you mean 'RUNBOT_RUNBOOKS_DIR'?)"),
    (["runs", "list"], {"RUNBOT_PORT": "eighty"}, 1, "setting port (RUNBOT_PORT): Input should be a valid integer"),
    (["runs", "list"], {"RUNBOT_DATABASE_URL": "mysql://db/runbot"}, 1, "use sqlite:///PATH or postgresql://"),
    (["runs", "list"], {"RUNBOT_LOG_FORMAT": "xml"}, 1, "setting log_format (RUNBOT_LOG_FORMAT)"),
    (["runs", "list"], {}, 1, "no database at"),
    (["incidents", "list"], {}, 1, "no database at"),
    (["audit", "verify"], {}, 1, "no database at"),
    (["run", "nosuch"], {}, 1, "no runbook named 'nosuch'"),
    (["run", "disk", "--param", "oops"], {}, 1, "is not k=v"),
]


@pytest.mark.parametrize(("args", "extra", "code", "message"), BAD, ids=[" ".join(b[0]) + str(sorted(b[1])) for b in BAD])
def test_a_bad_invocation_or_setting_is_one_line_a_hint_and_the_right_exit_code(env, args, extra, code, message):
    out = rb({**env, **extra}, *args)
    assert out.returncode == code, out.stderr
    one_error_line_and_a_hint(out.stderr)
    assert message in out.stderr.splitlines()[0]


def test_a_group_without_a_command_shows_its_help_as_a_usage_error(env):
    out = rb(env, "runs")
    assert out.returncode == 2 and "Inspect and steer runs" in out.stdout + out.stderr


def test_version_and_debug_anywhere(env):
    from runbot import __version__

    out = rb(env, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"runbot {__version__}"
    assert rb(env, "lint", "--debug").returncode == 0  # --debug after the sub-command is accepted
    assert rb(env, "--debug", "lint").returncode == 0


def test_read_only_commands_never_create_a_database(env, tmp_path):
    for args in (["runs", "list"], ["alerts", "list"], ["incidents", "list"], ["audit", "verify"], ["runs", "show", "x"]):
        assert rb(env, *args).returncode == 1
    assert not (tmp_path / "data").exists()


def test_a_database_without_the_schema_is_named_with_the_fix(env, tmp_path):
    (tmp_path / "data").mkdir()
    import sqlite3

    sqlite3.connect(tmp_path / "data" / "runbot.db").close()
    out = rb(env, "runs", "list")
    assert out.returncode == 1 and "has no runbot schema" in out.stderr and "runbot db upgrade" in out.stderr


def test_output_json_has_the_stable_fields(env):
    assert rb(env, "db", "upgrade").returncode == 0
    created = rb(env, "run", "disk", "--detach")
    run_id = created.stdout.split()[1]
    [row] = json.loads(rb(env, "runs", "list", "--output", "json").stdout)
    assert set(row) == {"id", "runbook_name", "status", "incident_id", "alert_id", "requester", "manual", "params",
                        "created_at", "started_at", "finished_at", "reason"}
    assert row["id"] == run_id and row["status"] == "pending"
    shown = json.loads(rb(env, "runs", "show", run_id[:8], "-o", "json").stdout)
    assert shown["run"]["id"] == run_id and set(shown) == {"run", "steps", "approvals", "artifacts", "leases"}
    assert json.loads(rb(env, "incidents", "list", "--json").stdout) == []  # --json is short for --output json


def test_the_project_config_file_is_found_from_any_directory_of_the_checkout(tmp_path):
    project = tmp_path / "checkout"
    (project / "runbooks").mkdir(parents=True)
    write_runbook(project / "runbooks", "disk", RUNBOOK)
    (project / "runbot.yaml").write_text("command_allow: [df]\nlog_format: console\n")
    deep = project / "docs" / "notes"
    deep.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    out = rb(env, "lint", cwd=deep)
    assert out.returncode == 0, out.stderr
    assert "1 runbook(s) OK: disk" in out.stdout
    shown = json.loads(rb(env, "config", "show", cwd=deep).stdout)
    assert shown["config_file"] == str(project / "runbot.yaml")
    assert shown["data_dir"] == str(project / "data") and shown["command_allow"] == ["df"]
    assert not (deep / "data").exists()


def test_an_unknown_key_in_the_config_file_names_the_closest_setting(tmp_path):
    (tmp_path / "runbot.yaml").write_text("runbooks_dri: runbooks\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    out = rb(env, "lint", cwd=tmp_path)
    assert out.returncode == 1
    one_error_line_and_a_hint(out.stderr)
    assert "unknown setting 'runbooks_dri' (did you mean 'runbooks_dir'?)" in out.stderr


def test_a_postgres_url_as_libpq_writes_it_is_accepted(env):
    out = rb({**env, "RUNBOT_DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x"}, "config", "show")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["effective_database_url"].startswith("postgresql+psycopg://postgres@127.0.0.1:5432/x")


def test_serve_on_a_busy_port_says_so_before_anything_else(env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = rb(env, "serve", "--port", str(port))
    assert out.returncode == 1
    assert "serving" not in out.stderr
    one_error_line_and_a_hint(out.stderr)
    assert f"127.0.0.1:{port} is already in use" in out.stderr


def test_lint_knows_the_alerts_fields(env, runbooks_dir):
    write_runbook(runbooks_dir, "typo", """
        name: typo
        steps:
          - {id: look, type: log, with: {message: "{{ alert.label.instance }}"}}
    """)
    out = rb(env, "lint")
    assert out.returncode == 1
    assert "steps[0].with.message: alert has no field 'label' (did you mean alert.labels?)" in out.stdout


def test_a_dry_run_whose_template_fails_exits_non_zero(env, runbooks_dir, tmp_path):
    write_runbook(runbooks_dir, "needs", """
        name: needs
        steps:
          - {id: look, type: log, with: {message: "{{ alert.labels.instance.upper() }}"}}
          - {id: later, type: log, with: {message: "{{ steps.look.message }}"}}
    """)
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps({"labels": {"alertname": "X"}}))
    out = rb(env, "run", "needs", "--dry-run", "--alert", str(alert))
    assert out.returncode == 1, out.stdout
    assert "TEMPLATE ERROR" in out.stdout and "(decided at run time" in out.stdout
    assert "template(s) fail with this alert" in out.stderr


def test_approving_with_no_server_says_when_the_step_will_run(env, runbooks_dir):
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    write_runbook(runbooks_dir, "guarded", f"""
        name: guarded
        steps:
          - id: fix
            type: log
            risk: high
            approval: {{approvers: {{cli_users: [{me}]}}, allow_self_approval: true, timeout: 10m}}
            with: {{message: "fixing"}}
    """)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**env, "RUNBOT_PORT": str(port)}
    started = rb(env, "run", "guarded")
    run_id = started.stdout.split()[1]
    assert "is waiting" in started.stdout, started.stdout + started.stderr
    out = rb(env, "runs", "approve", run_id)
    assert out.returncode == 0, out.stderr
    assert "the step runs now" not in out.stdout
    assert f"no runbot server answers at http://127.0.0.1:{port}" in out.stdout and "runbot runs resume" in out.stdout
