"""`command`: run an allow-listed program as an argv list, locally or on a remote host over ssh.

Why it is built this way:

- **argv lists, never a shell.** Each element (templated or not) is one argv entry, so `; rm -rf /`,
  `$(...)`, backticks, globs and quotes are plain text to the program. A string `argv` is refused (lint and
  validation) rather than split, because splitting it correctly would need a shell.
- **Leading `-` in templated values** is passed literally, as its own entry; a program may still read it as
  an option. Put templated operands in `args:` and set `args_end_of_options: true` to get `--` between
  `argv` and `args`, which ends option parsing for programs following the POSIX convention.
- **Executable allow-list** (RUNBOT_COMMAND_ALLOW): absolute paths, or bare names resolved via PATH when
  checked. The program is started by the resolved absolute path, so a later PATH change cannot swap it.
  Relative paths are refused, and `argv[0]` must be literal (not a template) so lint can check it. The
  check runs at lint time and again at run time, where the configuration in force is what counts.
- **Environment allow-list** (RUNBOT_COMMAND_ENV_ALLOW): runbot's own environment holds tokens, so only
  listed variables pass through, plus the step's explicit `env:` entries.
- **Whole process group on timeout.** The program starts in a new session (its own process group); on
  timeout or cancellation the group gets SIGTERM, then SIGKILL after RUNBOT_COMMAND_KILL_GRACE, so
  grandchildren die too. Processes left in the group after the program exits are stopped the same way:
  nothing the step started outlives it (a daemon that calls setsid itself leaves the group by design).
- **Bounded output.** stdout and stderr are drained concurrently (a full pipe never blocks the program);
  the first RUNBOT_COMMAND_MAX_OUTPUT_BYTES of each are kept (text, or base64 if not UTF-8), the rest is
  counted and dropped.
- **Remote hosts use the system OpenSSH client**, not asyncssh: asyncssh is not a dependency, OpenSSH is
  on every host, reuses the operators' keys, agent (pass SSH_AUTH_SOCK through the env allow-list) and
  known_hosts, is the implementation security teams already audit, and the same process-group timeout
  handling applies. Options force `BatchMode=yes` (never prompt), `StrictHostKeyChecking=yes` with only
  the configured known_hosts file (no trust on first use), no agent/X11/port forwarding, and `--` before
  the host. The host must match RUNBOT_COMMAND_SSH_HOSTS and the remote `argv[0]` RUNBOT_COMMAND_SSH_ALLOW.
  sshd runs the command through the remote user's shell, so every argv element is `shlex.quote`d: the one
  place a shell string is built, and only from quoted elements. Killing ssh closes the session; a remote
  program that ignores the closed channel may keep running (wrap it in `timeout` remotely if that
  matters). Exit status 255 is ssh's own failure (connection, host key) and is reported as such.
- **Kind.** Commands change things (REMEDIATION: approval required) unless `read_only: true`, which makes
  the step a diagnostic the engine may repeat. A failed exit status is retryable (the runbook's `retry:`
  policy decides whether to retry); a refused command, bad cwd or missing executable is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from runbot.domain import StepKind
from runbot.netpolicy import HostPattern, normalize_host
from runbot.steps.base import Params, Step, StepContext, StepError, StepLogger, StepResult
from runbot.steps.http import REDACTION_MARGIN, capture_text, one_line, redacted_capture

if TYPE_CHECKING:
    from runbot.settings import Settings

SSH_FAILURE = 255
PIPE_DRAIN_SECONDS = 2.0  # after the group is gone, how long to wait for pipes held by escaped processes
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?)$"
)
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_SECRET_CALL = re.compile(r"\bsecret\s*\(")
SHOWN_ARGV_CHARS = 160  # a command line in messages and summaries; cut only after redaction

# Variables that make a program load or run code it did not ask for (dynamic loader, interpreters,
# shells), or change how it parses its own input: `env:` refuses them even though the values are literal.
DENIED_ENV = frozenset({
    "BASH_ENV", "ENV", "IFS", "PS4", "SHELLOPTS", "BASHOPTS", "CDPATH", "GLOBIGNORE", "PROMPT_COMMAND",
    "PATH", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "NODE_OPTIONS",
    "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "RUBYLIB", "RUBYOPT",
    "PERLLIB", "PERLIO", "LUA_PATH", "LUA_CPATH", "LUA_INIT", "TCLLIBPATH", "GIT_SSH", "GIT_SSH_COMMAND",
    "GIT_EXEC_PATH", "GIT_ASKPASS", "SSH_ASKPASS", "LESSOPEN", "LESSCLOSE", "OPENSSL_CONF", "OPENSSL_ENGINES",
})  # fmt: skip
DENIED_ENV_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_", "PYTHON", "PERL5", "GIT_CONFIG", "RUBY")


def denied_env(name: str) -> str | None:
    """Why `env:` may not set `name`, or None."""
    upper = name.upper()
    if upper in DENIED_ENV or upper.startswith(DENIED_ENV_PREFIXES):
        return (f"env {name} is refused: it changes which code the program loads or how it parses input "
                "(dynamic loader, interpreter or shell variable)")  # fmt: skip
    return None


class CommandRefused(Exception):
    """The policy refused the command (executable, host, configuration); never retryable."""


def _is_template(v: Any) -> bool:
    return isinstance(v, str) and ("{{" in v or "{%" in v)


def _argv_items(v: Any, field: str) -> Any:
    if isinstance(v, str):
        raise ValueError(
            f"{field} must be a YAML list, not a string: write e.g. {field}: [systemctl, restart, nginx] "
            "(one item per argument; no shell is used to split a string)"
        )
    if isinstance(v, list):
        out = []
        for item in v:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ValueError(f"{field} items must be strings, got {item!r}")
            out.append(item if isinstance(item, str) else str(item))
        return out
    return v


class SecretInArgv(Params):
    """The explicit, reasoned opt-in to a secret in argv (readable by every local user through `ps`)."""

    allow: Literal[True] = Field(description="must be true; the step refuses secrets in argv otherwise")
    reason: str = Field(min_length=3, description="why this program cannot read the secret from env or stdin")


class CommandParams(Params):
    argv: list[str] = Field(
        min_length=1, description="program and arguments, e.g. [systemctl, restart, nginx]"
    )
    args: list[str] = Field(
        default_factory=list, description="operands appended after argv (see args_end_of_options)"
    )
    args_end_of_options: bool = Field(default=False, description="insert -- between argv and args")
    cwd: str | None = Field(default=None, description="absolute working directory (local only)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables (local only)")
    stdin: str | None = Field(default=None, description="text written to the program's standard input")
    expect_exit: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="accepted exit codes"
    )
    read_only: bool = Field(default=False, description="the command changes nothing: no approval, repeatable")
    max_output_bytes: int | None = Field(
        default=None, ge=0, description="at most RUNBOT_COMMAND_MAX_OUTPUT_BYTES"
    )
    parse_json: bool = Field(default=False, description="parse stdout as JSON into output.json")
    host: str | None = Field(default=None, description="run over ssh on this host (RUNBOT_COMMAND_SSH_HOSTS)")
    user: str | None = Field(default=None, description="remote user; default RUNBOT_COMMAND_SSH_USER")
    port: int | None = Field(default=None, ge=1, le=65535, description="ssh port")
    secret_in_argv: SecretInArgv | None = Field(
        default=None, description="{allow: true, reason: ...}: accept a secret in argv (visible in ps)"
    )
    allow_dash_values: bool = Field(
        default=False, description="templated argv values may start with '-' (else refused as options)"
    )

    @field_validator("argv", mode="before")
    @classmethod
    def _argv(cls, v: Any) -> Any:
        return _argv_items(v, "argv")

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, v: Any) -> Any:
        return _argv_items(v, "args")

    @field_validator("argv", "args")
    @classmethod
    def _no_nul(cls, v: list[str]) -> list[str]:
        if any("\x00" in a for a in v):
            raise ValueError("arguments must not contain NUL bytes")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, str] = {}
        for k, val in v.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise ValueError(f"invalid environment variable name {k!r}")
            why = denied_env(k)
            if why:
                raise ValueError(why)
            if isinstance(val, bool) or not isinstance(val, str | int | float):
                raise ValueError(f"env {k}: expected a string")
            text = val if isinstance(val, str) else str(val)
            if "\x00" in text:
                raise ValueError(f"env {k}: NUL bytes are not allowed")
            out[k] = text
        return out

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isabs(v):
            raise ValueError("cwd must be an absolute path")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and (not _HOST.match(v) or v.startswith("-")):
            raise ValueError(f"invalid host {v!r}: a host name or IP address")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not _USER.match(v):
            raise ValueError(f"invalid user name {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CommandParams:
        if self.args_end_of_options and not self.args:
            raise ValueError("args_end_of_options needs args: the -- goes between argv and args")
        if self.host is None and (self.user is not None or self.port is not None):
            raise ValueError("user and port apply only with host")
        if self.host is not None and self.env:
            raise ValueError(
                "env is not supported with host (sshd would need AcceptEnv); pass values as arguments"
            )
        if self.host is not None and self.cwd is not None:
            raise ValueError("cwd is not supported with host; use absolute paths in the remote command")
        return self


# ---- executable resolution ----------------------------------------------------------------------------


def _search_path() -> str:
    """PATH without relative entries: a relative entry would make resolution depend on the cwd."""
    raw = os.environ.get("PATH", os.defpath)
    return os.pathsep.join(p for p in raw.split(os.pathsep) if os.path.isabs(p))


def _resolve(name: str, path: str) -> str | None:
    if os.path.isabs(name):
        return os.path.normpath(name)
    if "/" in name or not name:
        return None
    found = shutil.which(name, path=path)
    return os.path.normpath(found) if found else None


def _real(path: str | None) -> str | None:
    return os.path.realpath(path) if path is not None else None


def pin_allow_list(allow: Sequence[str]) -> dict[str, str]:
    """Each allow-list entry's real file (symlinks resolved, bare names looked up on PATH), as of now.

    Command pins these when it is built, so a PATH change or a new symlink later cannot make an entry
    mean another file: the allow-list names files, not strings.
    """
    path = _search_path()
    pins: dict[str, str] = {}
    for entry in allow:
        real = _real(_resolve(entry, path))
        if real is not None:
            pins[entry] = real
    return pins


def resolve_executable(
    name: str,
    allow: Sequence[str],
    *,
    setting: str = "RUNBOT_COMMAND_ALLOW",
    pins: dict[str, str] | None = None,
) -> str:
    """The absolute path to run for argv[0], or CommandRefused saying why it may not run.

    argv[0] is resolved (PATH lookup, then every symlink) to a real file, which must be the real file of
    an allow-list entry: `pins` (see pin_allow_list) when given, else the entries resolved now.
    """
    if not name:
        raise CommandRefused("argv[0] is empty")
    if "/" in name and not os.path.isabs(name):
        raise CommandRefused(
            f"{name}: relative paths are refused; use an absolute path or a bare name on PATH"
        )
    path = _search_path()
    candidate = _resolve(name, path)
    pinned = pins if pins is not None else pin_allow_list(allow)
    allowed = {pinned[e] for e in allow if e in pinned}
    if candidate is None:
        if name in allow:
            raise CommandRefused(f"{name} is allowed but not found on PATH")
        raise CommandRefused(f"{name} is not in {setting}")
    real = _real(candidate)
    if real not in allowed:
        shown = name if candidate == name else f"{name} ({candidate})"
        if real != candidate:
            shown += f" -> {real}"
        empty = " (empty)" if not allow else ""
        if name in pinned or candidate in pinned:
            was = pinned.get(name) or pinned.get(candidate)
            raise CommandRefused(f"{shown} is not the file allowed by {setting} ({was}): it changed since "
                                 "runbot started (a symlink or PATH); restart runbot to accept the new file")  # fmt: skip
        raise CommandRefused(f"{shown} is not in {setting}{empty}")
    if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
        raise CommandRefused(f"{candidate} is not an executable file")
    return candidate


# ---- process handling ---------------------------------------------------------------------------------


class _Capture:
    """Keeps the first `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.total = 0

    async def pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            room = self.cap - len(self.buf)
            if room > 0:
                self.buf += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.buf)


@dataclass
class ProcessOutcome:
    returncode: int
    stdout: _Capture
    stderr: _Capture
    timed_out: bool
    duration: float
    leftovers_killed: bool


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) processes in group `pgid` on Linux; None where /proc is not available."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _stop_group(proc: asyncio.subprocess.Process, pgid: int, grace: float) -> None:
    """SIGTERM the whole group, wait up to `grace` for it to empty, then SIGKILL what is left."""
    loop = asyncio.get_running_loop()
    _signal_group(pgid, signal.SIGTERM)
    end = loop.time() + grace
    while loop.time() < end:
        if proc.returncode is not None and not _group_alive(pgid):
            break
        await asyncio.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    await _wait_exit(proc)


async def _wait_exit(proc: asyncio.subprocess.Process) -> int:
    """Until the program itself has exited. Not `proc.wait()`: on Python 3.11 that also waits for the
    pipes to close, which a grandchild holding stdout could postpone indefinitely."""
    delay = 0.005
    while proc.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return proc.returncode


async def _feed(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    if writer is None:
        return
    try:
        writer.write(data)
        await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        writer.close()


async def run_process(
    argv: list[str],
    *,
    executable: str | None = None,
    cwd: str | None,
    env: dict[str, str],
    stdin: bytes | None,
    cap: int,
    deadline: float,
    grace: float,
    log: StepLogger | None = None,
) -> ProcessOutcome:
    """Run argv (argv[0] an absolute path) in its own process group, with a deadline and bounded capture.

    `executable`, when given, is the file actually executed (argv[0] is still what the program sees).
    `cap` bytes are kept per stream, plus REDACTION_MARGIN so a secret straddling the cut is still whole
    when it is masked (the caller cuts to `cap` after redaction).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        executable=executable,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    pgid = proc.pid  # setsid made it the leader of a new group
    out, err = _Capture(cap + REDACTION_MARGIN), _Capture(cap + REDACTION_MARGIN)
    tasks = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
    if stdin is not None:
        tasks.append(asyncio.create_task(_feed(proc.stdin, stdin)))
    timed_out = leftovers = False
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await _wait_exit(proc)
        except TimeoutError:
            timed_out = True
            if log:
                log.warning(f"timed out; stopping process group {pgid}")
            await _stop_group(proc, pgid, grace)
        if _group_alive(pgid):
            leftovers = True
            if log:
                log.warning(f"stopping processes left in group {pgid} after the program exited")
            await _stop_group(proc, pgid, grace)
        _, pending = await asyncio.wait(tasks, timeout=PIPE_DRAIN_SECONDS)
        for t in pending:
            t.cancel()
    except asyncio.CancelledError:
        # The run was cancelled: stop the group anyway, even if we are cancelled again while waiting.
        for t in tasks:
            t.cancel()
        await asyncio.shield(asyncio.ensure_future(_stop_group(proc, pgid, grace)))
        raise
    assert proc.returncode is not None
    return ProcessOutcome(proc.returncode, out, err, timed_out, loop.time() - started, leftovers)


# ---- the step -----------------------------------------------------------------------------------------


class Command(Step[CommandParams]):
    type = "command"
    kind = StepKind.REMEDIATION  # unless read_only: true
    Params = CommandParams
    default_timeout = 300.0
    doc = (
        "Runs an allow-listed program as an argv list (never a shell), locally or over ssh, with a timeout "
        "that kills the whole process group and bounded output capture."
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._pinned: dict[str, str] = pin_allow_list(settings.command_allow)  # real files, as of start

    def idempotent(self, params: CommandParams) -> bool:
        return params.read_only

    def changes_things(self, raw_params: dict[str, Any]) -> bool:
        """Anything but a literal `read_only: true` may change the world and needs approval."""
        return raw_params.get("read_only") is not True

    def lint(self, raw_params: dict[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        argv = raw_params.get("argv")
        host = raw_params.get("host")
        if argv is None:
            problems.append(("argv", "argv is required: a YAML list such as [systemctl, restart, nginx]"))
        elif not isinstance(argv, list):
            try:
                _argv_items(argv, "argv")
            except ValueError as exc:
                problems.append(("argv", str(exc)))
            else:
                problems.append(("argv", "argv must be a YAML list of strings"))
        elif not argv:
            problems.append(("argv", "argv must name at least the program to run"))
        else:
            exe = argv[0]
            if not isinstance(exe, str) or _is_template(exe):
                why = "the program must be a literal name or path, not a template, so the allow-list can be checked"
                problems.append(("argv[0]", why))
            elif host is not None:
                if exe not in self.settings.command_ssh_allow:
                    problems.append(("argv[0]", f"{exe} is not in RUNBOT_COMMAND_SSH_ALLOW"))
            elif not (exe in self.settings.command_allow and _resolve(exe, _search_path()) is None):
                try:  # (a literal entry is fine even if it is not on PATH here)
                    resolve_executable(exe, self.settings.command_allow, pins=self._pins())
                except CommandRefused as exc:
                    problems.append(("argv[0]", str(exc)))
        args = raw_params.get("args")
        if args is not None and not isinstance(args, list):
            problems.append(("args", "args must be a YAML list, not a string"))
        if raw_params.get("args_end_of_options") and not args:
            problems.append(
                ("args_end_of_options", "args_end_of_options needs args: the -- goes between argv and args")
            )
        problems += self._lint_secrets_and_env(raw_params)
        read_only = raw_params.get("read_only")
        if read_only is not None and not isinstance(read_only, bool):
            why = "read_only must be a literal true or false: it decides whether the step needs approval"
            problems.append(("read_only", why))
        if isinstance(host, str) and not _is_template(host):
            try:
                self._check_host(
                    host, raw_params.get("port") if isinstance(raw_params.get("port"), int) else None
                )
            except CommandRefused as exc:
                problems.append(("host", str(exc)))
        return problems

    @staticmethod
    def _lint_secrets_and_env(raw_params: dict[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        opt_in = raw_params.get("secret_in_argv")
        allowed = False
        if opt_in is not None:
            try:
                SecretInArgv.model_validate(opt_in)
                allowed = True
            except ValueError:
                problems.append(("secret_in_argv", "write secret_in_argv: {allow: true, reason: \"why this "
                                 "program cannot read it from env: or stdin:\"}"))  # fmt: skip
        for field in ("argv", "args"):
            items = raw_params.get(field)
            if not isinstance(items, list) or allowed:
                continue
            for i, item in enumerate(items):
                if isinstance(item, str) and _is_template(item) and _SECRET_CALL.search(item):
                    problems.append((f"{field}[{i}]", ARGV_DELIVERY_ADVICE))
        env = raw_params.get("env")
        if isinstance(env, dict):
            for name in env:
                why = denied_env(str(name))
                if why:
                    problems.append((f"env.{name}", why))
        return problems

    def _pins(self) -> dict[str, str]:
        """The allow-list's files as pinned when this step type was built (runbot's start); entries that
        did not resolve then are pinned when first found."""
        for entry in self.settings.command_allow:
            if entry not in self._pinned:
                self._pinned.update(pin_allow_list([entry]))
        return self._pinned

    async def run(self, params: CommandParams, ctx: StepContext) -> StepResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.remaining(self.default_timeout)
        red = ctx.redactor.redact
        logical = [*params.argv, *(["--"] if params.args_end_of_options else []), *params.args]
        where = f" on {params.host}" if params.host else ""
        label = f"command {show_argv(ctx.redactor.redact_argv(logical))}{where}"

        self._refuse_secret_in_argv(params, ctx, label)
        self._refuse_dash_values(params, ctx, label)
        executable: str | None = None
        try:
            if ctx.rehearsal is not None:  # `runbot test`: nothing is resolved or spawned (see runbot.rehearsal)
                argv = logical
                shown_argv = ctx.redactor.redact_argv(argv)
            elif params.host:
                argv = self._ssh_argv(params)
                shown_argv = self._ssh_argv(params, element=red)  # masked before quoting, not after
            else:
                argv = self._local_argv(params)
                executable = os.path.realpath(argv[0])  # the pinned file itself, never a symlink hop
                shown_argv = ctx.redactor.redact_argv(argv)
        except CommandRefused as exc:
            raise StepError(red(f"{label}: refused: {exc}"), retryable=False) from None
        if params.cwd is not None and ctx.rehearsal is None and not os.path.isdir(params.cwd):
            raise StepError(red(f"{label}: cwd {params.cwd} is not a directory"), retryable=False)
        env = {k: os.environ[k] for k in self.settings.command_env_allow if k in os.environ}
        env.update(params.env)
        cap = self.settings.command_max_output_bytes
        if params.max_output_bytes is not None:
            cap = min(cap, params.max_output_bytes)

        ctx.log.info("running command", argv=shown_argv)
        try:
            # `runbot test`: the recorded outcome stands in for the process
            outcome = await (ctx.rehearsal.run_process if ctx.rehearsal is not None else run_process)(
                argv,
                executable=executable,
                cwd=params.cwd,
                env=env,
                stdin=params.stdin.encode() if params.stdin is not None else None,
                cap=cap,
                deadline=deadline,
                grace=self.settings.command_kill_grace,
                log=ctx.log,
            )
        except OSError as exc:
            raise StepError(red(f"{label}: cannot start: {exc.strerror or exc}"), retryable=False) from None

        output = self._output(shown_argv, params, outcome, ctx, cap)
        if outcome.timed_out:
            msg = f"{label}: timed out after {outcome.duration:.1f}s; process group killed"
            raise StepError(red(msg), retryable=True, output=output)
        rc = outcome.returncode
        if rc not in params.expect_exit:
            tail = _last_line(outcome.stderr, red) or _last_line(outcome.stdout, red)
            detail = f": {one_line(tail, 160)}" if tail else ""
            if params.host and rc == SSH_FAILURE:
                msg = f"{label}: ssh failed (exit 255){detail}"
            elif rc < 0:
                msg = f"{label}: killed by {_signal_name(-rc)} (expected exit {params.expect_exit}){detail}"
            else:
                msg = f"{label}: exited with {rc} (expected {params.expect_exit}){detail}"
            raise StepError(red(msg), retryable=True, output=output)
        summary = f"{label}: exit {rc} in {round(outcome.duration * 1000)} ms"
        return StepResult(output=output, summary=red(summary))

    # ---- argv construction ------------------------------------------------------------------------------

    @staticmethod
    def _refuse_secret_in_argv(params: CommandParams, ctx: StepContext, label: str) -> None:
        """A registered secret in argv is refused at run time too (e.g. vault.credentials values)."""
        if params.secret_in_argv is not None:
            return
        for field, items in (("argv", params.argv), ("args", params.args)):
            for i, item in enumerate(items):
                if ctx.redactor.contains_secret(item):
                    raise StepError(f"{label}: refused: {field}[{i}] holds a secret; {ARGV_DELIVERY_ADVICE}",
                                    retryable=False)  # fmt: skip

    @staticmethod
    def _refuse_dash_values(params: CommandParams, ctx: StepContext, label: str) -> None:
        """A value that came from a template and starts with '-' would be read as an option: refuse it.

        An element written with a literal leading '-' (`--name={{ x }}`) is the author's option; operands
        after `--` (args with args_end_of_options) cannot be options. Needs the step's raw (unrendered)
        parameters, which the engine passes in ctx.raw_params.
        """
        raw = ctx.raw_params or {}
        if params.allow_dash_values:
            return
        checks = [("argv", params.argv, raw.get("argv"))]
        if not params.args_end_of_options:
            checks.append(("args", params.args, raw.get("args")))
        for field, rendered, templ in checks:
            if not isinstance(templ, list) or len(templ) != len(rendered):
                continue
            for i, (value, source) in enumerate(zip(rendered, templ, strict=True)):
                if i == 0 and field == "argv":
                    continue
                if _is_template(source) and value.startswith("-") and not str(source).startswith("-"):
                    shown = one_line(ctx.redactor.redact(value), 40)
                    raise StepError(
                        f"{label}: refused: {field}[{i}] = {shown!r} comes from a template and starts with "
                        "'-', so the program would read it as an option; put operands in args: with "
                        "args_end_of_options: true, or set allow_dash_values: true", retryable=False)  # fmt: skip

    def _local_argv(self, params: CommandParams) -> list[str]:
        exe = resolve_executable(params.argv[0], self.settings.command_allow, pins=self._pins())
        tail = [*params.argv[1:], *(["--"] if params.args_end_of_options else []), *params.args]
        return [exe, *tail]

    def _check_host(self, host: str, port: int | None) -> str:
        patterns = [HostPattern.parse(p) for p in self.settings.command_ssh_hosts]
        norm = normalize_host(host)
        if not any(p.matches(norm, port or 22) for p in patterns):
            empty = " (empty)" if not patterns else ""
            raise CommandRefused(f"host {host} is not in RUNBOT_COMMAND_SSH_HOSTS{empty}")
        return norm

    def _ssh_argv(self, params: CommandParams, element: Callable[[str], str] = str) -> list[str]:
        """The ssh command line; `element` is applied to each remote element before it is quoted."""
        s = self.settings
        assert params.host is not None
        host = self._check_host(params.host, params.port)
        if params.argv[0] not in s.command_ssh_allow:
            raise CommandRefused(f"{params.argv[0]} is not in RUNBOT_COMMAND_SSH_ALLOW")
        known = s.command_ssh_known_hosts
        if known is None:
            raise CommandRefused(
                "RUNBOT_COMMAND_SSH_KNOWN_HOSTS is not set (host keys are never trusted on first use)"
            )
        if re.search(r"[\s\"']", str(known)):
            raise CommandRefused("RUNBOT_COMMAND_SSH_KNOWN_HOSTS must not contain spaces or quotes")
        ssh = _resolve(s.command_ssh_binary, _search_path())
        if ssh is None or not os.access(ssh, os.X_OK):
            raise CommandRefused(f"ssh client {s.command_ssh_binary} not found")
        cmd = [
            ssh, "-T",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", f"ConnectTimeout={max(1, math.ceil(s.command_ssh_connect_timeout))}",
            "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no",
            "-o", "ClearAllForwardings=yes",
            "-o", "PermitLocalCommand=no",
        ]  # fmt: skip
        if s.command_ssh_identity is not None:
            cmd += ["-i", str(s.command_ssh_identity), "-o", "IdentitiesOnly=yes"]
        if params.port is not None:
            cmd += ["-p", str(params.port)]
        user = params.user or s.command_ssh_user
        if user:
            cmd += ["-l", user]
        remote = [*params.argv, *(["--"] if params.args_end_of_options else []), *params.args]
        # The remote sshd hands the command line to the user's shell: quote every element, add nothing else.
        return [*cmd, "--", host, *(shlex.quote(element(a)) for a in remote)]

    # ---- output -----------------------------------------------------------------------------------------

    @staticmethod
    def _output(
        argv: list[str], params: CommandParams, outcome: ProcessOutcome, ctx: StepContext, limit: int
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exit_code": outcome.returncode,
            "signal": _signal_name(-outcome.returncode) if outcome.returncode < 0 else None,
            "timed_out": outcome.timed_out,
            "duration_ms": round(outcome.duration * 1000),
            "argv": argv,
            "host": params.host,
        }
        for name, cap in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            data, truncated = redacted_capture(bytes(cap.buf), cap.total, limit, ctx.redactor)
            text, encoding = capture_text(data, truncated=truncated)  # base64 only of masked bytes
            out[name] = text
            out[f"{name}_encoding"] = encoding
            out[f"{name}_truncated"] = truncated
            out[f"{name}_bytes"] = cap.total
        if params.parse_json:
            parsed: Any = None
            if out["stdout_encoding"] == "text" and not out["stdout_truncated"]:
                with contextlib.suppress(ValueError):
                    parsed = json.loads(out["stdout"])
            out["json"] = parsed
        redacted: dict[str, Any] = ctx.redactor.redact_obj(out)
        return redacted


def _last_line(cap: _Capture, red: Callable[[str], str]) -> str:
    """The last line of a stream, masked before it is flattened and cut for a message."""
    text = red(bytes(cap.buf).decode("utf-8", "replace")).strip()
    return text.splitlines()[-1] if text else ""


ARGV_DELIVERY_ADVICE = (
    "a secret in argv is readable by every local user (ps, /proc/PID/cmdline); deliver it with env: "
    "(e.g. env: {PGPASSWORD: \"{{ secret('kv/db#password') }}\"}) or stdin:, or set secret_in_argv: "
    "{allow: true, reason: \"...\"}"
)


def show_argv(argv: Sequence[str], limit: int = SHOWN_ARGV_CHARS) -> str:
    """A command line for messages: an argv list (already redacted element by element), then cut."""
    text = json.dumps(list(argv), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
