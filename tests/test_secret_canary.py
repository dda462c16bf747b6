"""The canary: a runbook fetches known secrets and tries to leak them through every channel it has.

A KV secret (three values: special characters, quotes and whitespace runs, a long token) and a dynamic
database password are pushed into step outputs, exception messages, log lines (the step logger,
structlog and stdlib logging), an HTTP request echoed back by a local server, a Basic-auth header runbot
builds from the URL and the server echoes, a non-UTF-8 HTTP body and non-UTF-8 command output (stored
as base64), a command line with a quoted, whitespace-laden argument and a long `--token=...`, a failed
step's error output, the audit trail, Slack messages, the dry-run plan and audit exports. Afterwards every
one of those, the database file (with its WAL), a `pg_dump` of a PostgreSQL run, the captured logs, the
fake Slack's call log and the postmortems (md, html, Slack upload) are scanned for the values, their URL,
base64 (whole and at each of the 3 alignments inside a larger string), hex, JSON and HTML encodings, and
every 12-character piece of them: none may appear.
"""

from __future__ import annotations

import asyncio
import base64
import html
import importlib.util
import io
import json
import logging
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import structlog
from sqlalchemy import insert, select

from runbot.domain import RunStatus, StepKind
from runbot.engine.state import INCIDENTS, OUTBOX
from runbot.observability import configure_logging
from runbot.secrets.leases import lease_lines
from runbot.steps.base import Params, Step, StepContext, StepError, StepResult
from tests.conftest import write_runbook
from tests.engine.helpers import drive, start, steps
from tests.secrets.helpers import vault_settings, wait_until
from tests.support.http_target import HttpTarget, Recorded, Reply
from tests.support.openbao import OpenBao, PgDatabase

pytest_plugins = ["tests.support.openbao_fixtures"]
pytestmark = pytest.mark.integration

TAIL = "7f3a9c0b12d4e5f6"  # distinctive: must not appear anywhere, whole or in pieces
CANARY = f"Canary&<tw33t>+/=?\"'%é-{TAIL}"  # quotes, URL-, HTML- and JSON-special characters, non-ASCII
SPACED = "it's  \"sp4ced\"\t\tqu0te'd   s3cr3t-e1d2c3b4a5"  # quotes and runs of whitespace (shlex, one_line)
LONG = "L0ngT0k3n-9e8d7c6b5a4f3e2d1c0b-a1b2c3d4e5f6a7b8"  # 46 characters, passed as --token=... in argv


def leak_forms(value: str) -> dict[str, str]:
    """Everything a scan looks for: the forms below, base64 cores at the 3 alignments, hex, and every
    12-character piece of the value."""
    out = forms(value)
    raw = value.encode()
    for k in range(3):  # base64 of a larger string holding the value at byte offset k (mod 3)
        enc = base64.b64encode(b"\0" * k + raw + b"\0\0\0").decode()
        core = enc[(0, 2, 3)[k]: 4 * ((k + len(raw)) // 3) + (0, 1, 2)[(k + len(raw)) % 3]]
        out[f"b64_align{k}"] = core
        out[f"b64url_align{k}"] = core.translate(str.maketrans("+/", "-_"))
    out["hex"] = raw.hex()
    out["url_safe_slash"] = urllib.parse.quote(value)
    out |= {f"piece{i}": value[i: i + 12] for i in range(len(value) - 11)}
    return out


def forms(value: str) -> dict[str, str]:
    """The value as it may travel: raw, URL-encoded, base64 (std/url-safe, padded or not), JSON and HTML escaped."""
    raw = value.encode()
    out = {
        "raw": value,
        "url": urllib.parse.quote(value, safe=""),
        "url_plus": urllib.parse.quote_plus(value),
        "b64": base64.b64encode(raw).decode(),
        "b64url": base64.urlsafe_b64encode(raw).decode(),
        "b64_nopad": base64.b64encode(raw).decode().rstrip("="),
        "json": json.dumps(value)[1:-1],
        "json_utf8": json.dumps(value, ensure_ascii=False)[1:-1],
        "html": html.escape(value),
    }
    return {k: v for k, v in out.items() if len(v) >= 6}


class LeakParams(Params):
    value: str
    mode: Literal["output", "log", "raise", "steperror"]


class Leak(Step[LeakParams]):
    """A step written to leak: it gets the real value and pushes it, in every encoding, wherever it can."""

    type = "test.leak"
    kind = StepKind.DIAGNOSTIC
    Params = LeakParams
    seen: ClassVar[list[str]] = []

    async def run(self, params: LeakParams, ctx: StepContext) -> StepResult:
        v = params.value
        self.seen.append(v)
        f = forms(v)
        if params.mode == "output":
            return StepResult(output={"forms": f, "nested": [{"deep": v}], v: "as a key"}, summary=f"leaking {v}")
        if params.mode == "log":
            ctx.log.warning(f"step logger {v}", secret=v, encoded=f)
            structlog.get_logger("leaky").warning(f"structlog {v}", b64=f["b64"])
            logging.getLogger("leaky").warning("stdlib logging %s %s", v, f["url"])
            return StepResult(output={})
        if params.mode == "raise":
            raise RuntimeError(f"unexpected {v} / {f['b64']} / {f['json']}")
        raise StepError(f"refused {f['url']}", retryable=False, output={"echo": f})


RUNBOOK = """
name: canary
unattended: {{reason: "canary drill against a loopback echo server"}}
steps:
  - id: db
    type: vault.credentials
    with: {{path: {creds}}}
  - {{id: out_kv, type: test.leak, with: {{mode: output, value: "{{{{ secret('kv/canary#value') }}}}"}}}}
  - {{id: out_db, type: test.leak, with: {{mode: output, value: "{{{{ steps.db.password }}}}"}}}}
  - {{id: logs, type: test.leak, with: {{mode: log, value: "{{{{ secret('kv/canary#value') }}}}"}}}}
  - {{id: logs_db, type: test.leak, with: {{mode: log, value: "{{{{ steps.db.password }}}}"}}}}
  - {{id: crash, type: test.leak, continue_on_failure: true, with: {{mode: raise, value: "{{{{ secret('kv/canary#value') }}}}"}}}}
  - {{id: refuse, type: test.leak, continue_on_failure: true, with: {{mode: steperror, value: "{{{{ steps.db.password }}}}"}}}}
  - id: fail_msg
    type: fail
    continue_on_failure: true
    with: {{message: "failing with {{{{ secret('kv/canary#value') }}}} and {{{{ steps.db.password }}}}", retryable: false}}
  - id: echo
    type: http.request
    with:
      method: POST
      url: "{echo}"
      headers: {{X-Db-Password: "{{{{ steps.db.password }}}}"}}
      json: {{token: "{{{{ secret('kv/canary#value') }}}}", password: "{{{{ steps.db.password }}}}"}}
  - id: basic
    type: http.request
    with: {{url: "{basic}"}}
  - id: binary
    type: http.request
    with: {{method: POST, url: "{binary}", json: {{token: "{{{{ secret('kv/canary#spaced') }}}}"}}}}
  - id: cmd_binary
    type: command
    with:
      argv: ["{py}", "{dump}", plain]
      env: {{CANARY: "{{{{ secret('kv/canary#value') }}}}"}}
      stdin: "{{{{ secret('kv/canary#spaced') }}}}"
      read_only: true
  - id: cmd_spaced
    type: command
    continue_on_failure: true
    with:
      argv: ["{py}", "{fail}", "{{{{ secret('kv/canary#spaced') }}}}"]
      secret_in_argv: {{allow: true, reason: "canary: a tool that only reads argv"}}
      read_only: true
  - id: cmd_long
    type: command
    with:
      argv: ["{py}", "{dump}", --verbose, --region=eu-west-1, --cluster=prod-main-01, --namespace=payments,
             "--token={{{{ secret('kv/canary#long') }}}}"]
      secret_in_argv: {{allow: true, reason: "canary: a long command line"}}
      read_only: true
  - id: approve_me
    type: log
    risk: high
    approval: {{approvers: {{slack_users: [U0ALICE]}}, allow_self_approval: true}}
    with: {{message: "remediating with {{{{ secret('kv/canary#value') }}}} as {{{{ steps.db.username }}}}"}}
"""


def echo(req: Recorded) -> Reply:
    """Echo back everything received, raw and re-encoded, as a careless service would."""
    parsed = req.json()
    return Reply(json={"body": req.text(), "parsed": parsed, "header": req.header("X-Db-Password"),
                       "token_b64": base64.b64encode(parsed["token"].encode()).decode(),
                       "token_url": urllib.parse.quote(parsed["token"]),
                       "password_b64url": base64.urlsafe_b64encode(parsed["password"].encode()).decode()})  # fmt: skip


def echo_headers(req: Recorded) -> Reply:
    """Echo the Authorization header runbot built from the URL's user:password, in the body and a header."""
    auth = req.header("Authorization") or ""
    return Reply(json={"authorization": auth, "headers": dict(req.headers)}, headers={"X-Echo-Authorization": auth})


def binary_echo(req: Recorded) -> Reply:
    """A body that is not UTF-8 (so runbot keeps it as base64), with the secret inside."""
    return Reply(body=b"\xff\xfe\x00" + req.json()["token"].encode() + b"\x80\x81")


DUMP = """import os, sys
out = sys.stdout.buffer
out.write(b"\\xff\\xfe" + os.environb.get(b"CANARY", b"") + b"\\x00" + sys.stdin.buffer.read() + b"\\x80")
out.write(" ".join(sys.argv[1:]).encode() + b"\\xff")
sys.stderr.write(" ".join(sys.argv[1:]))
"""
FAIL = """import sys
sys.stderr.write("cannot use " + sys.argv[1] + "\\n")
sys.exit(3)
"""


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Capture runbot's structured logs (JSON lines) and all stdlib logging (httpx, hvac, ...) at DEBUG."""
    buf = io.StringIO()
    configure_logging("DEBUG", "json", stream=buf)
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


INCIDENT = "inc-canary"


def leak(bao_db: OpenBao, vault_pg: PgDatabase, make_runtime: Any, runbooks_dir: Path, tmp_path: Path,
         db_url: str | None = None, **settings: Any) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Run the canary runbook (in an incident, so a postmortem exists) and hand over what it left."""
    bao_db.put_kv("kv", "canary", {"value": CANARY, "spaced": SPACED, "long": LONG})
    creds = bao_db.db_role(vault_pg, "canary")
    (tmp_path / "dump.py").write_text(DUMP)
    (tmp_path / "fail.py").write_text(FAIL)
    with HttpTarget() as target:
        target.route("/echo", echo)
        target.route("/headers", echo_headers)
        target.route("/binary", binary_echo)
        basic = target.url("/headers").replace("://", "://canary:{{ secret('kv/canary#value', 'url') }}@", 1)
        write_runbook(runbooks_dir, "canary", RUNBOOK.format(
            creds=creds, echo=target.url("/echo"), basic=basic,
            binary=target.url("/binary"), py=sys.executable, dump=tmp_path / "dump.py", fail=tmp_path / "fail.py"))
        rt = make_runtime(db_url, **vault_settings(bao_db), http_allow_hosts=[target.netloc],
                          http_allow_cidrs=["127.0.0.0/8"], command_allow=[sys.executable], **settings)  # fmt: skip
        rt.engine.outbox_enabled = True  # Slack messages are delivered from the outbox
        rt.registry.register(Leak)
        assert not rt.catalog.reload(), rt.catalog.problems
        Leak.seen.clear()
        now = datetime.now(UTC)
        with rt.db.tx() as conn:
            conn.execute(insert(INCIDENTS).values(
                id=INCIDENT, group_key="{}:{alertname=\"Canary\"}", status="open", title="canary drill",
                severity="critical", labels={"service": "canary"}, opened_at=now, resolved_at=None, updated_at=now))
        run_id = start(rt, "canary", requester="U0BOB", incident_id=INCIDENT)
        assert drive(rt, run_id) is RunStatus.WAITING  # at the approval, secrets paths listed
        [appr] = rt.engine.pending_approvals(run_id)
        rt.engine.vote(appr["id"], "U0ALICE", True)
        assert drive(rt, run_id) is RunStatus.SUCCEEDED
        db_password = next(v for v in Leak.seen if v != CANARY)
        assert CANARY in Leak.seen, "the plugin really had the value"
        assert target.last("/echo").json() == {"token": CANARY, "password": db_password}, "the server really got it"
        assert "Basic " in target.last("/headers").header("Authorization", ""), "runbot really built Basic auth"
        wait_until(lambda: all("revoked" in ln for ln in lease_lines(rt.db, run_id)[2:]))
        yield {"rt": rt, "run_id": run_id, "secrets": [CANARY, SPACED, LONG, db_password]}


@pytest.fixture
def leaked_run(bao_db: OpenBao, vault_pg: PgDatabase, make_runtime: Any, runbooks_dir: Path, tmp_path: Path,
               logs: io.StringIO) -> Iterator[dict[str, Any]]:  # fmt: skip
    for found in leak(bao_db, vault_pg, make_runtime, runbooks_dir, tmp_path):
        yield {**found, "logs": logs}


def assert_clean(channel: str, text: str, secrets: list[str]) -> None:
    assert TAIL not in text, f"{channel} leaks a piece of the canary"
    for value in secrets:
        for name, form in leak_forms(value).items():
            assert form not in text, f"{channel} leaks the secret ({name} form: {form!r})"


def assert_clean_bytes(channel: str, data: bytes, secrets: list[str]) -> None:
    assert TAIL.encode() not in data, f"{channel} leaks a piece of the canary"
    for value in secrets:
        for name, form in leak_forms(value).items():
            assert form.encode() not in data, f"{channel} leaks the secret ({name} form: {form!r})"


def test_step_outputs_errors_and_summaries_hold_no_secret(leaked_run: dict[str, Any]) -> None:
    rt, run_id = leaked_run["rt"], leaked_run["run_id"]
    rows = steps(rt, run_id)
    by_id = {r["step_id"]: r for r in rows}
    assert by_id["out_kv"]["output"]["forms"]["raw"] == "****"
    assert by_id["crash"]["error"].startswith("internal error in step type test.leak: RuntimeError: unexpected ****")
    assert by_id["echo"]["output"]["json"]["parsed"] == {"token": "****", "password": "****"}
    assert_clean("step records", json.dumps(rows, default=str, ensure_ascii=False), leaked_run["secrets"])


def test_the_audit_trail_holds_no_secret(leaked_run: dict[str, Any]) -> None:
    from runbot.audit import log as audit

    with leaked_run["rt"].db.read() as conn:
        events = list(audit.iter_db_records(conn))
    assert any(e["action"] == "approval.requested" and e["details"]["secrets"] for e in events)
    assert_clean("audit trail", json.dumps(events, default=str, ensure_ascii=False), leaked_run["secrets"])


def test_the_database_file_holds_no_secret(leaked_run: dict[str, Any]) -> None:
    rt = leaked_run["rt"]
    path = Path(rt.settings.effective_database_url.split("///", 1)[1])
    data = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # db, -wal, -shm
    assert_clean_bytes("database file", data, leaked_run["secrets"])


def test_the_leaks_were_really_attempted_and_masked(leaked_run: dict[str, Any]) -> None:
    """The new channels carried the secret and came back masked (not merely absent)."""
    by_id = {r["step_id"]: r for r in steps(leaked_run["rt"], leaked_run["run_id"])}
    basic = by_id["basic"]["output"]
    assert basic["json"]["authorization"].startswith("Basic ") and "****" in basic["json"]["authorization"]
    assert "****" in basic["headers"]["x-echo-authorization"]
    binary = by_id["binary"]["output"]
    assert binary["body_encoding"] == "base64" and b"****" in base64.b64decode(binary["body"])
    dumped = by_id["cmd_binary"]["output"]
    assert dumped["stdout_encoding"] == "base64" and base64.b64decode(dumped["stdout"]).count(b"****") == 2
    assert by_id["cmd_spaced"]["status"] == "failed" and "cannot use ****" in by_id["cmd_spaced"]["error"]
    long_cmd = by_id["cmd_long"]
    assert long_cmd["output"]["argv"][-1] == "--token=****" and long_cmd["summary"].startswith('command ["')


def test_postmortems_hold_no_secret(leaked_run: dict[str, Any]) -> None:
    from runbot.postmortem.render import render_for_slack, render_postmortem

    db = leaked_run["rt"].db
    for fmt in ("md", "html"):
        text = render_postmortem(db, INCIDENT, fmt)
        assert leaked_run["run_id"] in text or "canary" in text
        assert_clean(f"postmortem ({fmt})", text, leaked_run["secrets"])
    assert_clean("postmortem (Slack upload)", render_for_slack(db, INCIDENT), leaked_run["secrets"])


def test_the_fake_slack_call_log_holds_no_secret(leaked_run: dict[str, Any]) -> None:
    """Deliver the run's outbox through the real Slack adapter to the fake Slack, then read its call log."""
    from runbot.adapters.slack.service import SlackService
    from runbot.settings import Settings
    from tests.support.fake_slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack

    rt = leaked_run["rt"]
    with FakeSlack() as fake:
        fake.add_channel("C0INC", "incidents")
        rt.settings = Settings(**{**rt.settings.model_dump(), "slack_bot_token": BOT_TOKEN,
                                  "slack_signing_secret": SIGNING_SECRET, "slack_api_url": fake.api_url,
                                  "slack_default_channel": "C0INC"})  # fmt: skip
        service = SlackService.build(rt)
        for _ in range(20):
            if not service.delivery.deliver_due():
                break
        calls = fake.calls
        assert any(c.method == "chat.postMessage" for c in calls), [c.method for c in calls]
        text = json.dumps([c.args for c in calls], default=str, ensure_ascii=False)
    assert "****" in text
    assert_clean("fake Slack call log", text, leaked_run["secrets"])


@pytest.fixture
def leaked_pg_run(bao_db: OpenBao, vault_pg: PgDatabase, make_runtime: Any, runbooks_dir: Path, tmp_path: Path,
                  pg_url: str) -> Iterator[dict[str, Any]]:  # fmt: skip
    for found in leak(bao_db, vault_pg, make_runtime, runbooks_dir, tmp_path, pg_url):
        yield {**found, "pg_url": pg_url}


def test_a_pg_dump_of_the_postgresql_database_holds_no_secret(leaked_pg_run: dict[str, Any]) -> None:
    url = leaked_pg_run["pg_url"].replace("postgresql+psycopg://", "postgresql://")
    dump = subprocess.run(["pg_dump", "--no-owner", url], capture_output=True, check=True, timeout=120).stdout
    assert b"audit" in dump and leaked_pg_run["run_id"].encode() in dump
    assert_clean_bytes("pg_dump", dump, leaked_pg_run["secrets"])


def test_captured_logs_hold_no_secret(leaked_run: dict[str, Any]) -> None:
    text = leaked_run["logs"].getvalue()
    assert "step logger ****" in text and "structlog ****" in text and "stdlib logging **** ****" in text
    assert "HTTP Request: POST http://127.0.0.1" in text, "httpx logged the URL (with the token in its query)"
    assert_clean("captured logs", text, leaked_run["secrets"])


def test_outbox_messages_hold_no_secret(leaked_run: dict[str, Any]) -> None:
    with leaked_run["rt"].db.read() as conn:
        payloads = [r.payload for r in conn.execute(select(OUTBOX.c.payload))]
    assert payloads
    assert_clean("outbox", json.dumps(payloads, default=str, ensure_ascii=False), leaked_run["secrets"])


def test_slack_message_bodies_hold_no_secret(leaked_run: dict[str, Any]) -> None:
    if importlib.util.find_spec("runbot.adapters.slack.blocks") is None:
        pytest.skip("the Slack adapter is not there yet")
    from runbot.adapters.slack import blocks
    from runbot.adapters.slack.runview import load_run_view

    rt, run_id = leaked_run["rt"], leaked_run["run_id"]
    view = load_run_view(rt, run_id)
    assert view is not None
    messages: list[Any] = [blocks.incident_message(view), blocks.finished_reply(view)]
    for sid, rows in view.journal.items():
        messages += [blocks.step_result_reply(view, sid, r["attempt"], show_output=True) for r in rows]
    messages += [blocks.approval_message(view, a, "U0ALICE") for a in view.approvals]
    text = json.dumps([{"text": m.text, "blocks": m.blocks} for m in messages if m is not None], ensure_ascii=False)
    assert "****" in text
    assert_clean("Slack messages", text, leaked_run["secrets"])


def test_audit_exports_hold_no_secret(leaked_run: dict[str, Any]) -> None:
    if importlib.util.find_spec("runbot.audit.export") is None:
        pytest.skip("audit export is not there yet")
    from runbot.audit.export import FORMATS, export_chunks

    for fmt in FORMATS:
        text = "".join(export_chunks(leaked_run["rt"].db, fmt))
        assert leaked_run["run_id"] in text
        assert_clean(f"audit export ({fmt})", text, leaked_run["secrets"])


def test_the_dry_run_plan_holds_no_secret(leaked_run: dict[str, Any]) -> None:
    from runbot.engine.dryrun import plan

    rt = leaked_run["rt"]
    lines = plan(rt.catalog.get("canary"), None, {}, rt.registry)
    assert any("secrets: kv/canary#value" in line for line in lines)
    assert_clean("dry-run plan", "\n".join(lines), leaked_run["secrets"])


def test_rehearsal_output_holds_no_secret(tmp_path: Path) -> None:
    """`runbot test` uses the rehearsal file's (fake) values; one set to the canary must not show either."""
    if importlib.util.find_spec("runbot.rehearsal.session") is None:
        pytest.skip("rehearsal (runbot test) is not there yet")
    from runbot.rehearsal.report import render
    from runbot.rehearsal.session import rehearse
    from runbot.rehearsal.spec import parse_rehearsal
    from runbot.settings import Settings

    book = tmp_path / "canary.yaml"
    book.write_text("""
name: canary-rehearsal
unattended: {reason: "canary drill, rehearsed only"}
steps:
  - {id: say, type: log, with: {message: "token {{ secret('kv/canary#value') }}"}}
  - id: call
    type: http.request
    with: {method: POST, url: "https://api.example.test/x", json: {token: "{{ secret('kv/canary#value') }}"}}
  - {id: oops, type: fail, continue_on_failure: true, with: {message: "{{ secret('kv/canary#value') }}", retryable: false}}
""")
    spec = parse_rehearsal({"runbook": str(book), "secrets": {"kv/canary#value": CANARY},
                            "responses": {"call": {"status": 200, "json": {"echo": CANARY}}}}, tmp_path / "x.rehearsal.yaml")  # fmt: skip
    result = rehearse(spec, Settings(data_dir=tmp_path / "data", runbooks_dir=tmp_path,
                                     http_allow_hosts=["api.example.test"]))  # fmt: skip
    text = "\n".join(render(result, verbose=True))
    assert result.status == "succeeded", text
    assert "****" in text
    assert_clean("rehearsal report", text + repr(result.lines), [CANARY])


def test_a_run_failing_on_a_secret_names_the_path_only(bao: OpenBao, make_runtime: Any, runbooks_dir: Path) -> None:
    bao.put_kv("kv", "canary-denied", {"value": CANARY})
    bao.policy("no-canary", 'path "kv/data/other" { capabilities = ["read"] }')
    write_runbook(runbooks_dir, "denied", "name: denied\nsteps:\n"
                  "  - {id: s, type: log, with: {message: \"{{ secret('kv/canary-denied#value') }}\"}}\n")  # fmt: skip
    rt = make_runtime(**vault_settings(bao, vault_token=bao.token(policies=["no-canary"])))
    run_id = start(rt, "denied")
    assert asyncio.run(rt.engine.drive(run_id)) is RunStatus.FAILED
    [row] = steps(rt, run_id)
    assert row["error"] == "secret 'kv/canary-denied#value': permission denied by Vault policy (403)"


def test_a_secret_spliced_raw_into_a_url_query_does_not_leak(make_runtime: Any, runbooks_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """httpx re-encodes it in no standard form and splits it at '&': the url shown is built from masked
    inputs, and the echoed, re-encoded query is caught by percent-decoding the window."""
    monkeypatch.setenv("RUNBOT_SECRET_KV_URL_CANARY__VALUE", CANARY)  # the env provider: no Vault needed here
    with HttpTarget() as target:
        target.route("/echo", lambda req: Reply(json={"query": req.query}))
        write_runbook(runbooks_dir, "url", f"""
            name: url
            steps:
              - {{id: get, type: http.request, with: {{url: "{target.url('/echo')}?key={{{{ secret('kv/url-canary#value') }}}}"}}}}
            """)  # fmt: skip
        rt = make_runtime(http_allow_hosts=[target.netloc], http_allow_cidrs=["127.0.0.0/8"])
        run_id = start(rt, "url")
        assert drive(rt, run_id) is RunStatus.SUCCEEDED
        assert_clean("http.request output", json.dumps(steps(rt, run_id), default=str, ensure_ascii=False), [CANARY])


def test_a_secret_url_encoded_at_resolution_does_not_leak(make_runtime: Any, runbooks_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The supported way to put a secret in a URL: secret(ref, 'url') encodes the value itself."""
    monkeypatch.setenv("RUNBOT_SECRET_KV_URL_CANARY__VALUE", CANARY)
    with HttpTarget() as target:
        target.route("/echo", lambda req: Reply(json={"query": req.query}))
        write_runbook(runbooks_dir, "url", f"""
            name: url
            steps:
              - {{id: get, type: http.request, with: {{url: "{target.url('/echo')}?key={{{{ secret('kv/url-canary#value', 'url') }}}}"}}}}
            """)  # fmt: skip
        rt = make_runtime(http_allow_hosts=[target.netloc], http_allow_cidrs=["127.0.0.0/8"])
        run_id = start(rt, "url")
        assert drive(rt, run_id) is RunStatus.SUCCEEDED
        assert target.calls("/echo") == 1
        assert_clean("http.request output", json.dumps(steps(rt, run_id), default=str, ensure_ascii=False), [CANARY])
