"""The chain head published by `serve` on a schedule: a log line, a Slack channel (outbox), a webhook.

Each published form, saved by whoever received it, is an anchor `runbot audit verify --head-file` reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from runbot.audit import anchor as A
from runbot.audit import log as audit
from runbot.audit.publish import TOPIC, HeadPublisher, install
from runbot.audit.records import chain_head
from runbot.engine.state import OUTBOX
from tests.adapters.slack.harness import Bots, diagnostic, runbook, standard_fake
from tests.support.http_target import HttpTarget, Reply
from tests.support.waiting import wait_until

HOOK_TOKEN = "hook-token-4b1e9d"


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    with HttpTarget() as t:
        t.route("/health", Reply(json={"status": "ok"}))
        t.route("/anchors", Reply(json={"stored": True}), method="POST")
        yield t


@pytest.fixture
def bots(tmp_path: Path, target: HttpTarget) -> Iterator[Bots]:
    with standard_fake() as fake:
        b = Bots(tmp_path, fake, target)
        try:
            yield b
        finally:
            b.stop_all()


class Recorder:
    """A structlog-shaped logger that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[dict] = []

    def info(self, event: str, **kw) -> None:
        self.lines.append({"event": event, **kw})

    warning = info


def holds(rt, text: str) -> bool:
    """The published text, read back as an anchor, is held by the verified chain."""
    a = A.read_anchor_text(text)
    with rt.db.read() as conn:
        result = audit.verify_db(conn)
        return result.ok and A.check_db(conn, a, result) is None


@pytest.mark.integration
def test_serve_publishes_the_head_to_slack_and_a_webhook_on_schedule(bots, target):
    bot = bots.start({"diag": runbook("diag", [diagnostic(target)])}, audit_head_publish_interval=0.2,
                     audit_head_publish_slack_channel="#ops", audit_head_publish_webhook_url=target.url("/anchors"),
                     audit_head_publish_webhook_token=HOOK_TOKEN)  # fmt: skip
    run_id = bot.alert_run("diag")
    bot.wait_run(run_id, "succeeded")
    seq, digest = chain_head(bot.rt.db)

    def posted_in_slack() -> list[str]:
        return [m.all_text() for m in bots.fake.roots("C0OPS") if f"runbot audit head: {seq} {digest}" in m.all_text()]

    def hooked() -> list:
        return [r for r in target.requests_for("/anchors", "POST") if r.json().get("seq") == seq]

    wait_until(lambda: posted_in_slack() and hooked(), timeout=20, what="the head in Slack and at the webhook")
    hook = hooked()[-1]
    assert hook.header("Authorization") == f"Bearer {HOOK_TOKEN}"
    assert hook.json()["hash"] == digest and hook.json()["text"] == f"runbot audit head: {seq} {digest}"
    assert holds(bot.rt, posted_in_slack()[-1]) and holds(bot.rt, hook.text())
    with bot.rt.db.read() as conn:  # the outbox carried it, and the audit trail is not flooded by publications
        assert conn.execute(select(OUTBOX.c.id).where(OUTBOX.c.topic == TOPIC)).first() is not None
        assert conn.execute(select(audit.EVENTS.c.seq).where(audit.EVENTS.c.action.like("audit.head%"))).first() is None


def test_the_log_line_is_an_anchor_and_a_failing_target_holds_up_no_other(story, make_runtime):
    rt = story.rt
    rt.settings.audit_head_publish_interval = 60.0
    rt.settings.audit_head_publish_slack_channel = "#ops"  # Slack is not configured in this runtime
    logs = Recorder()
    results = HeadPublisher(rt, logger=logs).publish_once()
    assert results["log"] is None and "Slack is not configured" in str(results["slack"])
    line = next(e for e in logs.lines if e["event"].startswith("runbot audit head:"))
    assert holds(rt, line["event"]) and line["seq"] == chain_head(rt.db)[0]
    assert any(e["event"] == "audit head not published" and e["target"] == "slack" for e in logs.lines)


def test_a_webhook_outside_the_outbound_policy_is_refused_at_start(story):
    rt = story.rt
    rt.settings.audit_head_publish_interval = 60.0
    rt.settings.audit_head_publish_webhook_url = "https://anchors.evil.example/collect"
    with pytest.raises(ValueError, match=r"RUNBOT_AUDIT_HEAD_PUBLISH_WEBHOOK_URL: host anchors\.evil\.example:443 is not"):
        install(rt)


def test_a_webhook_host_resolving_to_a_blocked_address_is_not_called(story, target):
    rt = story.rt
    rt.settings.audit_head_publish_interval = 60.0
    rt.settings.http_allow_hosts = [f"localhost:{target.port}"]
    rt.settings.http_allow_cidrs = []  # loopback is not opened: the name is allowed, its address is not
    rt.settings.audit_head_publish_webhook_url = f"http://localhost:{target.port}/anchors"
    results = HeadPublisher(rt).publish_once()
    assert "loopback" in str(results["webhook"]) and results["log"] is None
    assert target.calls("/anchors") == 0


def test_without_an_interval_nothing_is_published(story):
    assert install(story.rt) is None and not story.rt.background
