"""The canary: a runbook fetches known secrets and tries to leak them through every channel it has.

A KV secret and a dynamic database password are pushed into step outputs, exception messages, log lines
(the step logger, structlog and stdlib logging), an HTTP request echoed back by a local server, a failed
step's error output, the audit trail, Slack messages, the dry-run plan and audit exports. Afterwards every
one of those, the database file (with its WAL) and the captured logs are scanned for the values and their
URL, base64, JSON and HTML encodings: none may appear.
"""

from __future__ import annotations

import asyncio
import base64
import html
import importlib.util
import io
import json
import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import structlog
from sqlalchemy import select

from runbot.domain import RunStatus, StepKind
from runbot.engine.state import OUTBOX
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


@pytest.fixture
def leaked_run(bao_db: OpenBao, vault_pg: PgDatabase, make_runtime: Any, runbooks_dir: Path,
               logs: io.StringIO) -> Iterator[dict[str, Any]]:  # fmt: skip
    bao_db.put_kv("kv", "canary", {"value": CANARY})
    creds = bao_db.db_role(vault_pg, "canary")
    with HttpTarget() as target:
        target.route("/echo", echo)
        write_runbook(runbooks_dir, "canary", RUNBOOK.format(creds=creds, echo=target.url("/echo")))
        rt = make_runtime(**vault_settings(bao_db), http_allow_hosts=[target.netloc],
                          http_allow_cidrs=["127.0.0.0/8"])  # fmt: skip
        rt.engine.outbox_enabled = True  # Slack messages are delivered from the outbox
        rt.registry.register(Leak)
        assert not rt.catalog.reload()
        Leak.seen.clear()
        run_id = start(rt, "canary", requester="U0BOB")
        assert drive(rt, run_id) is RunStatus.WAITING  # at the approval, secrets paths listed
        [appr] = rt.engine.pending_approvals(run_id)
        rt.engine.vote(appr["id"], "U0ALICE", True)
        assert drive(rt, run_id) is RunStatus.SUCCEEDED
        db_password = next(v for v in Leak.seen if v != CANARY)
        assert CANARY in Leak.seen, "the plugin really had the value"
        assert target.last("/echo").json() == {"token": CANARY, "password": db_password}, "the server really got it"
        wait_until(lambda: all("revoked" in ln for ln in lease_lines(rt.db, run_id)[2:]))
        yield {"rt": rt, "run_id": run_id, "secrets": [CANARY, db_password], "logs": logs}


def assert_clean(channel: str, text: str, secrets: list[str]) -> None:
    assert TAIL not in text, f"{channel} leaks a piece of the canary"
    for value in secrets:
        for name, form in forms(value).items():
            assert form not in text, f"{channel} leaks the secret ({name} form)"


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
    assert TAIL.encode() not in data, "database file leaks a piece of the canary"
    for value in leaked_run["secrets"]:
        for name, form in forms(value).items():
            assert form.encode() not in data, f"database file leaks the secret ({name} form)"


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


@pytest.mark.xfail(strict=True, reason="core gap: a secret spliced raw into a URL is re-encoded by httpx in a "
                   "non-standard way and split at '&', so the redactor cannot recognise it; runbooks must use "
                   "secret(ref, 'url') in URLs (see docs/vault.md and the test below)")
def test_a_secret_spliced_raw_into_a_url_query_leaks_in_pieces(make_runtime: Any, runbooks_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
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
