"""`runbot lint`: every problem in one pass, each as file:line: field: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runbot.runbooks.loader import load_dir, parse_source
from runbot.settings import Settings
from runbot.steps.registry import StepRegistry

BROKEN = Path(__file__).parent / "broken"
RUNBOT = str(Path(sys.executable).with_name("runbot"))


def lint_lines(path: Path) -> list[str]:
    _, problems = load_dir(path, StepRegistry(Settings()))
    return [str(p) for p in problems]


def test_a_broken_directory_reports_every_problem_with_file_line_and_field():
    lines = lint_lines(BROKEN)
    many = str(BROKEN / "many.yaml")
    expected_prefixes = [
        f"{many}:5: match[1]: column 13: invalid regex",
        f"{many}:8: steps[0].type: unknown step type 'prometheus.querry'",
        f"{many}:11: steps[1].id: duplicate step id 'ratio'",
        f"{many}:14: steps[1].with.message: unknown template variable 'alerts'",
        f"{many}:18: steps[2].with.message: unknown parameter params.nope",
        f"{many}:18: steps[2].with.message: steps.restart is not an earlier step",
        f"{many}:19: steps[3]: step 'restart' changes things",
        f"{many}:26: steps[4].timeout: Value error, invalid duration",
        f"{many}:29: steps[4].colour: unknown field",
        f"{BROKEN / 'syntax.yaml'}:6: YAML syntax error",
        f"{BROKEN / 'nosteps.yaml'}:1: name: Value error, name must be lowercase",
        f"{BROKEN / 'nosteps.yaml'}:3: steps: List should have at least 1 item",
    ]
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in lines), f"missing {prefix!r} in:\n" + "\n".join(lines)


def test_lint_exits_non_zero_and_prints_all_problems():
    out = subprocess.run([RUNBOT, "lint", str(BROKEN)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stdout.count("many.yaml:") >= 9
    assert "problem(s)" in out.stderr and "Traceback" not in out.stderr + out.stdout


def test_a_step_with_approval_or_unattended_opt_in_is_accepted():
    reg = StepRegistry(Settings())
    approved = """
name: ok
steps:
  - id: restart
    type: log
    risk: high
    approval: {approvers: {slack_usergroups: [sre]}}
    with: {message: x}
"""
    book, problems = parse_source(approved, "ok.yaml", reg)
    assert problems == [] and book is not None
    unattended = approved.replace("    approval: {approvers: {slack_usergroups: [sre]}}\n", "") + \
        "unattended: {reason: \"lab environment, nothing customer facing\"}\n"
    book, problems = parse_source(unattended, "ok.yaml", reg)
    assert problems == [], problems


def test_templates_may_refer_to_earlier_steps_params_and_the_alert():
    src = """
name: refs
params:
  limit: {type: number, default: 0.05}
steps:
  - id: first
    type: log
    with: {message: "{{ alert.labels.service | default('x') }}"}
  - id: second
    type: log
    when: "{{ steps.first.message != '' and params.limit > 0 }}"
    with: {message: "{{ steps.first.message }} {{ run.id }} {{ incident.id | default('') }}"}
"""
    book, problems = parse_source(src, "refs.yaml", StepRegistry(Settings()))
    assert problems == [], problems
    assert [s.sid for s in book.spec.steps] == ["first", "second"]


def test_slack_users_that_are_not_user_ids_are_named_because_they_would_never_match():
    src = """
name: names
steps:
  - id: restart
    type: log
    risk: high
    approval: {approvers: {slack_users: [alice, "*", U0BOB, "slack:U0CAROL"]}}
    with: {message: x}
"""
    _, problems = parse_source(src, "names.yaml", StepRegistry(Settings()))
    lines = [str(p) for p in problems]
    assert len(lines) == 2, lines
    assert "steps[0].approval.approvers.slack_users[0]: 'alice' is not a Slack user id" in lines[0]
    assert "slack_users[1]: '*' is not a Slack user id" in lines[1]
