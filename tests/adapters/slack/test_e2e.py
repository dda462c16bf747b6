"""End to end: Alertmanager webhook -> run -> diagnostics (and a graph) in the thread -> approval click ->
remediation against a local HTTP target -> the thread shows success; the fake Slack's whole call log is checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from runbot.adapters.slack.blocks import APPROVE_ACTION
from tests.support.fake_slack import Call
from tests.support.prometheus import FakePrometheusAPI, Reply, vector_reply

from .harness import ALICE, DEPLOY_TOKEN, Bots, diagnostic, remediation, runbook

pytestmark = pytest.mark.integration
WEBHOOK_TOKEN = "am-webhook-token-for-tests"
HOSTILE = "<!channel> <https://evil.example|click me> & <@U0ALICE>"


@pytest.fixture
def prometheus() -> Iterator[FakePrometheusAPI]:
    now = time.time()
    matrix = Reply(body={"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"code": "500"}, "values": [[now - 600 + 60 * i, str(0.01 * i)] for i in range(10)]}]}})  # fmt: skip
    with FakePrometheusAPI([vector_reply(({}, 0.07)), matrix]) as prom:
        yield prom


def webhook_payload(labels: dict[str, str]) -> dict:
    alert = {"status": "firing", "labels": labels, "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
             "annotations": {"summary": f"5xx ratio above SLO {HOSTILE}", "runbook_url": "javascript:alert(1)"},
             "generatorURL": "http://prometheus.example/graph?g0.expr=up", "fingerprint": "0123456789abcdef"}  # fmt: skip
    return {"version": "4", "groupKey": '{}:{alertname="HighErrorRate"}', "truncatedAlerts": 0, "status": "firing",
            "receiver": "runbot", "groupLabels": {"alertname": "HighErrorRate"}, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": "http://alertmanager.example", "alerts": [alert]}  # fmt: skip


def test_alert_to_approved_remediation_as_seen_in_slack(bots: Bots, prometheus: FakePrometheusAPI,
                                                        on_db: dict[str, str]) -> None:  # fmt: skip
    fake, target = bots.fake, bots.target
    steps = [
        {"id": "error_ratio", "type": "prometheus.query", "with": {"query": "sum(rate(errors[5m]))"}},
        {"id": "error_graph", "type": "prometheus.graph", "with": {"query": "sum by (code) (rate(errors[1m]))",
                                                                   "range": "10m"}},
        diagnostic(target),
        remediation(target),
    ]  # fmt: skip
    bot = bots.start({"api-errors": runbook("api-errors", steps)}, prometheus_url=prometheus.url,
                     alertmanager_webhook_token=WEBHOOK_TOKEN, **on_db,
                     slack_runbook_url="https://git.example/ops/blob/main/{path}")  # fmt: skip

    labels = {"alertname": "HighErrorRate", "service": "checkout", "severity": "critical", "note": HOSTILE}
    resp = httpx.post(bot.url + "/webhooks/alertmanager", json=webhook_payload(labels), timeout=10,
                      headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})  # fmt: skip
    assert resp.status_code == 200, resp.text

    approval = bot.wait_for(lambda: next((m for m in fake.messages() if APPROVE_ACTION in str(m.blocks)), None),
                            timeout=30, what="approval request in the thread")  # fmt: skip
    root = fake.roots("C0OPS")[0]
    run_id = next(w.strip("`") for w in root.all_text().split() if w.startswith("`r"))
    assert target.calls("/rollback") == 0
    _, rurl = bot.click(APPROVE_ACTION, bot.approval_id(approval), ALICE, message_ts=approval.ts)
    assert bot.answer(rurl).startswith(":white_check_mark: Approved rollback")
    bot.wait_run(run_id, "succeeded", timeout=20)
    thread = lambda: [m.all_text() for m in fake.thread("C0OPS", root.ts)]  # noqa: E731
    bot.wait_for(lambda: any("finished: *succeeded*" in t for t in thread()), what="the end in the thread")
    bot.wait_for(lambda: "[succeeded]" in fake.message("C0OPS", root.ts).text, what="root shows success")

    # -- the remediation ran once, against the target, with the real secret (which Slack never saw)
    assert target.calls("/rollback", "POST") == 1
    assert target.last("/rollback").json() == {"service": "checkout"}
    assert all(DEPLOY_TOKEN not in json.dumps(c.args) for c in fake.calls)

    # -- the full call log: what was posted where, in which order (updates coalesce, so they are checked apart)
    log = [c for c in fake.calls if c.method not in LOOKUPS]
    assert all(c.status == 200 for c in log)
    named = collapse(log)
    posts = [n for n in named if n[0] not in ("chat.update", "response_url")]
    # step results due together share one reply (their order kept); the graph's file follows its result
    # (an approval request due with step results goes first: it may come before the last diagnostic's result)
    assert posts[0] == ("chat.postMessage", "root") and posts[-2:] == [
        ("chat.postMessage", "rollback"), ("chat.postMessage", "finished")], named
    assert posts.count(("chat.postMessage", "approval")) == 1
    middle = [n for n in posts[1:-2] if n[1] != "approval"]
    assert [n for n in middle if n[0] != "chat.postMessage"] == [
        ("files.getUploadURLExternal", ""), ("upload", ""), ("files.completeUploadExternal", "")], named
    assert [n[1] for n in middle if n[0] == "chat.postMessage"] in (
        ["error_ratio", "error_graph", "health"], ["error_ratio+error_graph", "health"],
        ["error_ratio", "error_graph+health"], ["error_ratio+error_graph+health"]), named
    assert middle.index(("files.getUploadURLExternal", "")) > next(
        i for i, n in enumerate(middle) if "error_graph" in n[1]), named
    assert named.count(("response_url", "Approved")) == 1
    assert named.index(("response_url", "Approved")) > named.index(("chat.postMessage", "approval"))
    first_approval_update = named.index(("chat.update", "approval"))
    assert first_approval_update > named.index(("chat.postMessage", "approval"))
    # the root is updated in place after the decision (to the outcome: checked above); the reply posts and
    # the update are separate calls, so which of them comes last depends on when delivery read the run
    assert ("chat.update", "root") in named[named.index(("chat.postMessage", "approval")):]
    assert {c.method for c in fake.calls if c.method in LOOKUPS} <= LOOKUPS

    # -- every Slack message is in the thread of one root, updated in place
    assert len(fake.roots("C0OPS")) == 1
    updates = fake.calls_to("chat.update")
    assert {c.args["ts"] for c in updates} == {root.ts, approval.ts}
    final = fake.message("C0OPS", root.ts).all_text()
    for sid in ("error_ratio", "error_graph", "health", "Roll back the last deploy"):
        assert f":white_check_mark: *{sid}*" in final
    assert "Approved* by alice" in fake.message("C0OPS", approval.ts).all_text()
    assert "<https://git.example/ops/blob/main/api-errors.yaml|source>" in final
    assert "<http://prometheus.example/graph?g0.expr=up|Alert source>" in final
    upload = fake.calls_to("files.completeUploadExternal")[0]
    assert upload.args["thread_ts"] == root.ts and next(iter(fake.uploads.values()))[:8] == b"\x89PNG\r\n\x1a\n"

    # -- hostile label and annotation text pings nobody and links nowhere
    for m in fake.messages():
        shown = m.all_text()
        assert "<!channel>" not in shown and "<https://evil.example" not in shown and "<@U0ALICE> &" not in shown
        assert "javascript:" not in shown or "<javascript:" not in shown
    assert "&lt;!channel&gt; &lt;https://evil.example|click me&gt; &amp; &lt;@U0ALICE&gt;" in root.all_text()


LOOKUPS = {"auth.test", "usergroups.list", "usergroups.users.list", "users.info"}


def collapse(log: list[Call]) -> list[tuple[str, str]]:
    """Name each call by the message it carries (root, a step's result, the approval, the end)."""
    out: list[tuple[str, str]] = []
    for c in log:
        text = json.dumps(c.args)
        if c.method == "chat.postMessage":
            if not c.args.get("thread_ts"):
                label = "root"
            elif APPROVE_ACTION in text:
                label = "approval"
            elif "finished" in text:
                label = "finished"
            else:
                label = "+".join(s for s in ("error_ratio", "error_graph", "health") if f"*{s}*" in text) or "rollback"
        elif c.method == "chat.update":
            label = "approval" if "Approval needed" in text else "root"
        elif c.method == "response_url":
            label = "Approved" if "Approved" in text else text[:40]
        else:
            label = ""
        out.append((c.method, label))
    return out
