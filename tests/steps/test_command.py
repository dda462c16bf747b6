"""command: literal argv, allow-lists, process-group timeouts, env allow-list, capture limits, ssh argv."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from runbot.redaction import Redactor
from runbot.settings import Settings
from runbot.steps.base import StepContext, StepError, StepLogger, StepResult
from runbot.steps.command import Command, CommandParams, CommandRefused, resolve_executable
from runbot.steps.registry import StepRegistry

PY = sys.executable

NASTY = [
    "; rm -rf /",
    "$(touch SENTINEL)",
    "`touch SENTINEL`",
    "&& touch SENTINEL",
    "| cat /etc/passwd",
    "-rf",
    "--help",
    "*",
    "a b",
    "'quoted' \"double\"",
    "line\nbreak",
    "$HOME",
    "",
]


# ---- helpers -----------------------------------------------------------------------------------------


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip())
    return str(path)


@pytest.fixture
def argv_printer(tmp_path: Path) -> str:
    return script(tmp_path, "argv.py", "import json, sys\nprint(json.dumps(sys.argv[1:]))\n")


def settings(**kw: Any) -> Settings:
    kw.setdefault("command_allow", [PY])
    kw.setdefault("command_kill_grace", 0.3)
    return Settings(**kw)


def make_ctx(s: Settings, redactor: Redactor | None = None) -> StepContext:
    red = redactor or Redactor()
    return StepContext(
        run_id="r1",
        step_id="s1",
        attempt=1,
        idempotency_key="r1:s1:1",
        settings=s,
        log=StepLogger(structlog.get_logger(), red),
        redactor=red,
        scope={},
    )


def run(
    s: Settings, raw: dict[str, Any], *, timeout: float = 20.0, redactor: Redactor | None = None
) -> StepResult:
    step = Command(s)
    params = CommandParams.model_validate(raw)
    ctx = make_ctx(s, redactor)

    async def go() -> StepResult:
        ctx.deadline = asyncio.get_running_loop().time() + timeout
        result = await step.run(params, ctx)
        assert isinstance(result, StepResult)
        return result

    return asyncio.run(go())


def fails(s: Settings, raw: dict[str, Any], **kw: Any) -> StepError:
    with pytest.raises(StepError) as info:
        run(s, raw, **kw)
    assert "\n" not in info.value.message
    return info.value


def gone(pid: int) -> bool:
    """True when the process no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = [p for p in pids if not gone(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if not gone(p)]


TREE = """
    import os, signal, subprocess, sys, time
    pidfile, mode = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:  # the child: start a sleeping grandchild, report both pids, sleep
        prelude = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if mode == "stubborn" else ""
        gc = subprocess.Popen([sys.executable, "-c", prelude + "import time; time.sleep(60)"])
        time.sleep(0.2)
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()} {gc.pid}")
        time.sleep(60)
    else:
        subprocess.Popen([sys.executable, __file__, pidfile, mode, "child"])
        if mode == "exit":
            while not os.path.exists(pidfile) or not open(pidfile).read():
                time.sleep(0.05)
            print("leader done")
            sys.exit(0)
        time.sleep(60)
"""


def read_pids(pidfile: Path, timeout: float = 10.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pidfile.exists() and pidfile.read_text().strip():
            return [int(x) for x in pidfile.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the process tree never reported its pids")


# ---- literal arguments -------------------------------------------------------------------------------


def test_arguments_are_passed_literally_never_interpreted(tmp_path: Path, argv_printer: str) -> None:
    out = run(settings(), {"argv": [PY, argv_printer, *NASTY], "cwd": str(tmp_path)}).output
    assert json.loads(out["stdout"]) == NASTY
    assert not (tmp_path / "SENTINEL").exists()
    assert out["exit_code"] == 0 and out["argv"][0] == PY


def test_args_end_of_options_inserts_double_dash(argv_printer: str) -> None:
    out = run(
        settings(), {"argv": [PY, argv_printer, "-v"], "args": ["-rf", "x"], "args_end_of_options": True}
    )
    assert json.loads(out.output["stdout"]) == ["-v", "--", "-rf", "x"]
    out = run(settings(), {"argv": [PY, argv_printer], "args": ["-rf"]})
    assert json.loads(out.output["stdout"]) == ["-rf"]


def test_bare_names_resolve_via_path() -> None:
    out = run(settings(command_allow=["echo"]), {"argv": ["echo", "$(id)", "`id`"]}).output
    assert out["stdout"] == "$(id) `id`\n"
    assert os.path.isabs(out["argv"][0])


def test_numbers_in_argv_become_strings(argv_printer: str) -> None:
    out = run(settings(), {"argv": [PY, argv_printer, 5, 1.5]}).output
    assert json.loads(out["stdout"]) == ["5", "1.5"]


# ---- allow-list --------------------------------------------------------------------------------------


def test_disallowed_executable_is_refused_at_lint_and_run_time(tmp_path: Path) -> None:
    s = settings()
    sentinel = tmp_path / "touched"
    raw = {"argv": ["/usr/bin/touch", str(sentinel)]}
    step = Command(s)
    assert step.lint(raw) == [("argv[0]", "/usr/bin/touch is not in RUNBOT_COMMAND_ALLOW")]
    err = fails(s, raw)
    assert err.retryable is False and "refused: /usr/bin/touch is not in RUNBOT_COMMAND_ALLOW" in err.message
    assert not sentinel.exists()
    # a bare name is judged by what it resolves to
    assert "touch" in dict(step.lint({"argv": ["touch", "x"]}))["argv[0]"]
    assert "not in RUNBOT_COMMAND_ALLOW (empty)" in fails(Settings(), {"argv": [PY, "-V"]}).message


def test_relative_and_templated_executables_are_refused() -> None:
    step = Command(settings())
    assert "relative paths are refused" in dict(step.lint({"argv": ["./deploy.sh"]}))["argv[0]"]
    assert "not a template" in dict(step.lint({"argv": ["{{ alert.labels.tool }}", "x"]}))["argv[0]"]
    with pytest.raises(CommandRefused, match="relative paths"):
        resolve_executable("bin/python", [PY])


def test_allow_list_entries_resolve_the_same_way(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    assert resolve_executable(str(tool), [str(tool)]) == str(tool)
    assert resolve_executable(str(tmp_path / "bin" / ".." / "bin" / "mytool"), [str(tool)]) == str(tool)
    with pytest.raises(CommandRefused, match="not in RUNBOT_COMMAND_ALLOW"):
        resolve_executable(str(tool), ["mytool"])  # not on PATH, so the bare entry matches nothing


def test_string_argv_is_refused_with_advice() -> None:
    step = Command(settings())
    problems = dict(step.lint({"argv": "systemctl restart nginx"}))
    assert "must be a YAML list, not a string" in problems["argv"]
    assert "argv: [systemctl, restart, nginx]" in problems["argv"]
    with pytest.raises(ValueError, match="must be a YAML list, not a string"):
        CommandParams.model_validate({"argv": "systemctl restart nginx"})
    with pytest.raises(ValueError, match="must be a YAML list"):
        CommandParams.model_validate({"argv": [PY], "args": "-x y"})
    assert dict(step.lint({}))["argv"].startswith("argv is required")


# ---- process groups and timeouts ---------------------------------------------------------------------


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    tree = script(tmp_path, "tree.py", TREE)
    pidfile = tmp_path / "pids"
    t0 = time.monotonic()
    err = fails(settings(), {"argv": [PY, tree, str(pidfile), "polite"]}, timeout=2.0)
    assert err.retryable is True and "timed out" in err.message and "process group killed" in err.message
    assert err.output["timed_out"] is True and err.output["signal"] == "SIGTERM"
    assert time.monotonic() - t0 < 6
    pids = read_pids(pidfile)
    assert len(pids) == 2 and wait_gone(pids) == []


def test_sigterm_ignored_means_sigkill_after_grace(tmp_path: Path) -> None:
    tree = script(tmp_path, "tree.py", TREE)
    pidfile = tmp_path / "pids"
    fails(settings(command_kill_grace=0.5), {"argv": [PY, tree, str(pidfile), "stubborn"]}, timeout=2.0)
    pids = read_pids(pidfile)
    assert wait_gone(pids, timeout=2.0) == []  # the grandchild ignored SIGTERM; SIGKILL got it


def test_processes_left_behind_are_stopped_when_the_program_exits(tmp_path: Path) -> None:
    tree = script(tmp_path, "tree.py", TREE)
    pidfile = tmp_path / "pids"
    t0 = time.monotonic()
    out = run(settings(), {"argv": [PY, tree, str(pidfile), "exit"]}).output
    assert out["exit_code"] == 0 and out["stdout"] == "leader done\n"
    assert time.monotonic() - t0 < 10  # did not wait for the 60 s sleepers holding the pipes
    assert wait_gone(read_pids(pidfile)) == []


def test_cancellation_stops_the_process_group(tmp_path: Path) -> None:
    tree = script(tmp_path, "tree.py", TREE)
    pidfile = tmp_path / "pids"
    s = settings()
    step = Command(s)
    params = CommandParams.model_validate({"argv": [PY, tree, str(pidfile), "polite"]})

    async def go() -> None:
        task = asyncio.create_task(step.run(params, make_ctx(s)))
        while not (pidfile.exists() and pidfile.read_text().strip()):
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert wait_gone(read_pids(pidfile)) == []


# ---- environment, cwd, stdin -------------------------------------------------------------------------


def test_only_allow_listed_environment_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOT_TEST_HIDDEN", "do-not-leak")
    monkeypatch.setenv("RUNBOT_TEST_SHOWN", "visible")
    env_dump = script(tmp_path, "env.py", "import json, os\nprint(json.dumps(dict(os.environ)))\n")
    s = settings(command_env_allow=["PATH", "RUNBOT_TEST_SHOWN"])
    env = json.loads(run(s, {"argv": [PY, env_dump], "env": {"EXTRA": "x", "N": 3}}).output["stdout"])
    assert "RUNBOT_TEST_HIDDEN" not in env
    assert env["RUNBOT_TEST_SHOWN"] == "visible" and env["EXTRA"] == "x" and env["N"] == "3"
    assert env["PATH"] == os.environ["PATH"]


def test_cwd_and_stdin(tmp_path: Path) -> None:
    prog = script(tmp_path, "io.py", "import os, sys\nprint(os.getcwd()); print(sys.stdin.read().upper())\n")
    out = run(settings(), {"argv": [PY, prog], "cwd": str(tmp_path), "stdin": "hello"}).output
    assert out["stdout"] == f"{tmp_path}\nHELLO\n"
    err = fails(settings(), {"argv": [PY, prog], "cwd": str(tmp_path / "missing")})
    assert err.retryable is False and "is not a directory" in err.message
    with pytest.raises(ValueError, match="absolute"):
        CommandParams.model_validate({"argv": [PY], "cwd": "relative/dir"})


# ---- exit codes and output ---------------------------------------------------------------------------


def test_exit_code_expectation(tmp_path: Path) -> None:
    prog = script(
        tmp_path,
        "exit3.py",
        "import sys\nprint('partial')\nprint('disk full', file=sys.stderr)\nsys.exit(3)\n",
    )
    err = fails(settings(), {"argv": [PY, prog]})
    assert err.retryable is True
    assert err.message.endswith("exited with 3 (expected [0]): disk full")
    assert err.output["exit_code"] == 3 and err.output["stdout"] == "partial\n"
    assert run(settings(), {"argv": [PY, prog], "expect_exit": [0, 3]}).output["exit_code"] == 3


def test_output_is_capped(tmp_path: Path) -> None:
    prog = script(
        tmp_path, "loud.py",
        "import sys\nsys.stdout.write('o' * 300000)\nsys.stdout.flush()\nsys.stderr.write('e' * 100000)\n",
    )  # fmt: skip
    out = run(settings(command_max_output_bytes=5000), {"argv": [PY, prog], "max_output_bytes": 1000}).output
    assert out["stdout"] == "o" * 1000 and out["stdout_truncated"] is True and out["stdout_bytes"] == 300000
    assert out["stderr"] == "e" * 1000 and out["stderr_truncated"] is True and out["stderr_bytes"] == 100000
    out = run(settings(command_max_output_bytes=10), {"argv": [PY, prog], "max_output_bytes": 1000}).output
    assert len(out["stdout"]) == 10


def test_binary_output_is_base64_and_json_is_parsed(tmp_path: Path) -> None:
    binary = script(tmp_path, "bin.py", "import sys\nsys.stdout.buffer.write(bytes([0xff, 0xfe, 0x00]))\n")
    out = run(settings(), {"argv": [PY, binary]}).output
    assert out["stdout_encoding"] == "base64" and out["stdout"] == "//4A"
    js = script(tmp_path, "js.py", "print('{\"ready\": true}')\n")
    assert run(settings(), {"argv": [PY, js], "parse_json": True}).output["json"] == {"ready": True}


def test_secrets_are_redacted_from_output_and_errors(tmp_path: Path, argv_printer: str) -> None:
    secret = "tok-9f8e7d6c"
    allow = {"allow": True, "reason": "the test program reads argv only"}
    err = fails(
        settings(), {"argv": [PY, argv_printer, secret], "expect_exit": [1], "secret_in_argv": allow},
        redactor=Redactor([secret]),
    )
    assert secret not in err.message and secret not in json.dumps(err.output)
    assert "****" in err.output["stdout"]


# ---- declarations ------------------------------------------------------------------------------------


def test_kind_follows_read_only() -> None:
    step = Command(settings())
    assert step.changes_things({"argv": ["x"]}) is True
    assert step.changes_things({"argv": ["x"], "read_only": True}) is False
    assert step.changes_things({"argv": ["x"], "read_only": "{{ params.ro }}"}) is True
    assert step.idempotent(CommandParams.model_validate({"argv": ["x"]})) is False
    assert step.idempotent(CommandParams.model_validate({"argv": ["x"], "read_only": True})) is True
    assert "literal true or false" in dict(step.lint({"argv": [PY], "read_only": "{{ x }}"}))["read_only"]


def test_registered() -> None:
    assert isinstance(StepRegistry(Settings()).get("command"), Command)


# ---- ssh ---------------------------------------------------------------------------------------------

FAKE_SSH = """
    #!{python}
    # Stands in for OpenSSH: records its argv, then runs the remote part through /bin/sh -c, as sshd would.
    import json, subprocess, sys
    args = sys.argv[1:]
    with open({record!r}, "w") as f:
        json.dump(args, f)
    host = args[args.index("--") + 1]
    if host == "down.internal.example":
        print("ssh: connect to host down.internal.example port 22: Connection refused", file=sys.stderr)
        sys.exit(255)
    remote = " ".join(args[args.index("--") + 2:])
    sys.exit(subprocess.call(["/bin/sh", "-c", remote]))
"""


@pytest.fixture
def ssh_setup(tmp_path: Path) -> tuple[Settings, Path]:
    record = tmp_path / "ssh-argv.json"
    fake = tmp_path / "ssh"
    fake.write_text(textwrap.dedent(FAKE_SSH.format(python=PY, record=str(record))).lstrip())
    fake.chmod(0o755)
    known = tmp_path / "known_hosts"
    known.write_text("")
    s = settings(
        command_allow=[],
        command_ssh_binary=str(fake),
        command_ssh_hosts=["*.internal.example", "10.1.2.3:2222"],
        command_ssh_allow=[PY],
        command_ssh_known_hosts=known,
        command_ssh_user="runbot",
    )
    return s, record


def test_ssh_quotes_every_argument_for_the_remote_shell(
    tmp_path: Path, argv_printer: str, ssh_setup: tuple[Settings, Path]
) -> None:
    s, record = ssh_setup
    out = run(s, {"argv": [PY, argv_printer, *NASTY], "host": "web1.internal.example"}).output
    assert json.loads(out["stdout"]) == NASTY  # survived a real shell unchanged
    assert not (tmp_path / "SENTINEL").exists()
    args = json.loads(record.read_text())
    opts = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
    assert "BatchMode=yes" in opts and "StrictHostKeyChecking=yes" in opts
    assert (
        f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in opts and "GlobalKnownHostsFile=/dev/null" in opts
    )
    assert "ForwardAgent=no" in opts
    assert args[args.index("-l") + 1] == "runbot"
    assert args[args.index("--") + 1] == "web1.internal.example"
    assert out["host"] == "web1.internal.example"


def test_ssh_host_and_remote_program_must_be_allowed(
    ssh_setup: tuple[Settings, Path], argv_printer: str
) -> None:
    s, record = ssh_setup
    step = Command(s)
    raw = {"argv": [PY, argv_printer], "host": "evil.example"}
    assert step.lint(raw) == [("host", "host evil.example is not in RUNBOT_COMMAND_SSH_HOSTS")]
    assert "refused: host evil.example is not in RUNBOT_COMMAND_SSH_HOSTS" in fails(s, raw).message
    assert not record.exists()
    assert (
        "not in RUNBOT_COMMAND_SSH_HOSTS" in fails(s, {"argv": [PY], "host": "10.1.2.3"}).message
    )  # port 22
    run(s, {"argv": [PY, argv_printer], "host": "10.1.2.3", "port": 2222})
    raw = {"argv": ["/bin/rm", "-rf", "/"], "host": "web1.internal.example"}
    assert step.lint(raw) == [("argv[0]", "/bin/rm is not in RUNBOT_COMMAND_SSH_ALLOW")]
    assert fails(s, raw).retryable is False
    with pytest.raises(ValueError, match="invalid host"):
        CommandParams.model_validate({"argv": [PY], "host": "-oProxyCommand=touch x"})


def test_ssh_failure_and_missing_known_hosts(ssh_setup: tuple[Settings, Path]) -> None:
    s, _ = ssh_setup
    err = fails(s, {"argv": [PY, "-V"], "host": "down.internal.example"})
    assert err.retryable is True and "ssh failed (exit 255): ssh: connect to host" in err.message
    no_known = s.model_copy(update={"command_ssh_known_hosts": None})
    err = fails(no_known, {"argv": [PY, "-V"], "host": "web1.internal.example"})
    assert err.retryable is False and "RUNBOT_COMMAND_SSH_KNOWN_HOSTS is not set" in err.message
    with pytest.raises(ValueError, match="env is not supported with host"):
        CommandParams.model_validate({"argv": [PY], "host": "a.internal.example", "env": {"A": "1"}})


# ---- secrets never in argv, command lines shown redacted ------------------------------------------------

SPACED = "it's  \"sp4ced\"\t\tqu0te'd   s3cr3t-e1d2"
LONG = "L0ngT0k3n-9e8d7c6b5a4f3e2d1c0b-a1b2c3d4e5f6a7b8"  # 46 characters
ALLOW = {"allow": True, "reason": "the program reads the token from argv only"}


def pieces(value: str, n: int = 12) -> list[str]:
    return [value[i : i + n] for i in range(len(value) - n + 1)]


def test_lint_refuses_a_secret_in_argv_unless_allowed_with_a_reason() -> None:
    step = Command(settings())
    problems = dict(step.lint({"argv": [PY, "--token={{ secret('kv/app#token') }}"], "read_only": True}))
    assert "readable by every local user" in problems["argv[1]"] and "env:" in problems["argv[1]"]
    assert "args[0]" in dict(step.lint({"argv": [PY], "args": ["{{ secret('kv/a#b') }}"]}))
    assert step.lint({"argv": [PY, "{{ secret('kv/app#token') }}"], "secret_in_argv": ALLOW}) == []
    no_reason = dict(step.lint({"argv": [PY, "{{ secret('kv/a#b') }}"], "secret_in_argv": {"allow": True}}))
    assert "reason" in no_reason["secret_in_argv"]
    assert step.lint({"argv": [PY], "env": {"TOKEN": "{{ secret('kv/a#b') }}"}, "stdin": "{{ secret('kv/a#c') }}"}) == []


def test_a_registered_secret_in_argv_is_refused_at_run_time(argv_printer: str) -> None:
    """What lint cannot see (e.g. vault.credentials values spliced in) is refused before anything runs."""
    err = fails(settings(), {"argv": [PY, argv_printer, f"--password={LONG}"]}, redactor=Redactor([LONG]))
    assert err.retryable is False and "argv[2] holds a secret" in err.message and LONG[:12] not in err.message


def test_secrets_reach_the_program_through_env_and_stdin(tmp_path: Path) -> None:
    reader = script(tmp_path, "read.py", "import os, sys\nprint(os.environ['TOKEN'] == sys.stdin.read())\n")
    red = Redactor([LONG])
    out = run(settings(), {"argv": [PY, reader], "env": {"TOKEN": LONG}, "stdin": LONG}, redactor=red).output
    assert out["stdout"].strip() == "True"
    assert LONG not in json.dumps(out)


def test_command_lines_are_shown_as_argv_lists_masked_before_joining_or_cutting(tmp_path: Path) -> None:
    failing = script(tmp_path, "fail.py", "import sys\nsys.exit(2)\n")
    red = Redactor([SPACED, LONG])
    argv = [PY, failing, "--verbose", "--region=eu-west-1", "--cluster=prod-main-01", SPACED, f"--token={LONG}"]
    err = fails(settings(), {"argv": argv, "secret_in_argv": ALLOW}, redactor=red)
    assert err.output["argv"][-2:] == ["****", "--token=****"]
    assert err.message.startswith('command ["')
    for value in (SPACED, LONG):
        for piece in pieces(value):
            assert piece not in err.message and piece not in json.dumps(err.output), piece


def test_ssh_command_lines_are_masked_before_quoting(
    ssh_setup: tuple[Settings, Path], argv_printer: str
) -> None:
    s, _ = ssh_setup
    red = Redactor([SPACED])
    out = run(s, {"argv": [PY, argv_printer, SPACED], "host": "web1.internal.example", "secret_in_argv": ALLOW},
              redactor=red).output  # fmt: skip
    assert out["argv"][-1] == "'****'" and "sp4ced" not in json.dumps(out)  # masked, then quoted


# ---- env deny-list --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP",
                                  "BASH_ENV", "ENV", "IFS", "PERL5OPT", "NODE_OPTIONS", "BASH_FUNC_ls", "PATH"])  # fmt: skip
def test_dangerous_environment_variables_are_refused(name: str) -> None:
    assert "is refused" in dict(Command(settings()).lint({"argv": [PY], "env": {name: "x"}}))[f"env.{name}"]
    with pytest.raises(ValueError, match="is refused"):
        CommandParams.model_validate({"argv": [PY], "env": {name: "/tmp/evil.so"}})


# ---- the allow-list names files -------------------------------------------------------------------------


def _tool(path: Path, word: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {word}\n")
    path.chmod(0o755)
    return path


def test_a_symlink_retargeted_after_start_is_refused(tmp_path: Path) -> None:
    good, evil = _tool(tmp_path / "good", "good"), _tool(tmp_path / "evil", "evil")
    link = tmp_path / "bin" / "tool"
    link.parent.mkdir()
    link.symlink_to(good)
    s = settings(command_allow=[str(link)])
    step = Command(s)
    assert step.lint({"argv": [str(link)]}) == []
    link.unlink()
    link.symlink_to(evil)
    problems = dict(step.lint({"argv": [str(link)]}))
    assert "not the file allowed" in problems["argv[0]"] and str(good) in problems["argv[0]"]


def test_a_bare_name_is_pinned_to_the_file_found_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tool(tmp_path / "usr" / "mytool", "real")
    _tool(tmp_path / "early" / "mytool", "impostor")
    monkeypatch.setenv("PATH", f"{tmp_path / 'usr'}:/usr/bin:/bin")
    s = settings(command_allow=["mytool"])
    step = Command(s)
    assert run(s, {"argv": ["mytool"]}).output["stdout"].strip() == "real"

    async def go() -> StepError:
        monkeypatch.setenv("PATH", f"{tmp_path / 'early'}:{tmp_path / 'usr'}:/usr/bin:/bin")  # PATH order changed
        ctx = make_ctx(s)
        with pytest.raises(StepError) as info:
            await step.run(CommandParams.model_validate({"argv": ["mytool"]}), ctx)
        return info.value

    err = asyncio.run(go())
    assert err.retryable is False and "not the file allowed" in err.message


def test_the_pinned_file_itself_is_executed(tmp_path: Path, argv_printer: str) -> None:
    link = tmp_path / "py"
    link.symlink_to(PY)
    out = run(settings(command_allow=[str(link)]), {"argv": [str(link), argv_printer, "x"]}).output
    assert json.loads(out["stdout"]) == ["x"] and out["argv"][0] == str(link)


# ---- options injection ----------------------------------------------------------------------------------


def run_templated(s: Settings, raw: dict[str, Any], rendered: dict[str, Any]) -> StepResult:
    """As the engine calls it: rendered params, with the raw `with:` in ctx.raw_params."""
    ctx = make_ctx(s)
    ctx.raw_params = raw

    async def go() -> StepResult:
        ctx.deadline = asyncio.get_running_loop().time() + 20
        result = await Command(s).run(CommandParams.model_validate(rendered), ctx)
        assert isinstance(result, StepResult)
        return result

    return asyncio.run(go())


def test_a_templated_value_starting_with_dash_is_refused(argv_printer: str) -> None:
    s = settings()
    raw = {"argv": [PY, argv_printer, "{{ alert.labels.path }}"]}
    with pytest.raises(StepError, match=r"argv\[2\] = '--delete' comes from a template") as info:
        run_templated(s, raw, {"argv": [PY, argv_printer, "--delete"]})
    assert info.value.retryable is False
    allowed = run_templated(s, {**raw, "allow_dash_values": True},
                            {"argv": [PY, argv_printer, "--delete"], "allow_dash_values": True})  # fmt: skip
    assert json.loads(allowed.output["stdout"]) == ["--delete"]


def test_literal_options_and_operands_after_double_dash_are_not_refused(argv_printer: str) -> None:
    s = settings()
    raw = {"argv": [PY, argv_printer, "--name={{ x }}"], "args": ["{{ y }}"], "args_end_of_options": True}
    out = run_templated(s, raw, {"argv": [PY, argv_printer, "--name=-x"], "args": ["-rf"],
                                 "args_end_of_options": True}).output  # fmt: skip
    assert json.loads(out["stdout"]) == ["--name=-x", "--", "-rf"]
    with pytest.raises(StepError, match=r"args\[0\]"):
        run_templated(s, {"argv": [PY, argv_printer], "args": ["{{ y }}"]}, {"argv": [PY, argv_printer], "args": ["-rf"]})


def test_the_engine_refuses_an_alert_label_that_would_become_an_option(
    make_runtime: Any, runbooks_dir: Path, argv_printer: str
) -> None:
    """End to end: the engine hands the raw `with:` to the step, so a hostile label is caught."""
    from runbot.domain import RunStatus
    from tests.conftest import write_runbook
    from tests.engine.helpers import drive, start, steps

    write_runbook(runbooks_dir, "find", f"""
        name: find
        steps:
          - id: look
            type: command
            with: {{argv: ["{PY}", "{argv_printer}", "{{{{ alert.labels.path }}}}"], read_only: true}}
        """)  # fmt: skip
    rt = make_runtime(command_allow=[PY])
    assert not rt.catalog.reload(), rt.catalog.problems
    bad = start(rt, "find", alert={"labels": {"path": "-delete"}, "annotations": {}})
    assert drive(rt, bad) is RunStatus.FAILED
    assert "argv[2] = '-delete' comes from a template" in steps(rt, bad)[0]["error"]
    good = start(rt, "find", alert={"labels": {"path": "/var/log"}, "annotations": {}})
    assert drive(rt, good) is RunStatus.SUCCEEDED
