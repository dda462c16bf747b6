"""One whole incident cycle against a real `runbot serve` subprocess with the fake Slack: alert -> run ->
diagnostic -> approval clicked in Slack -> remediation -> resolved alert. The observability tests (logs,
metrics, dashboard) all watch this same cycle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from runbot.adapters.slack.blocks import APPROVE_ACTION
from tests.adapters.alertmanager.samples import alert, payload, resolved
from tests.adapters.alertmanager.server import RunbotServer
from tests.adapters.slack.harness import ALICE, Bot, standard_fake
from tests.conftest import write_runbook
from tests.support.fake_slack import (
    BOT_TOKEN,
    FORM,
    SIGNING_SECRET,
    FakeSlack,
    block_action_payload,
    interactive_body,
    sign,
)
from tests.support.http_target import HttpTarget, Reply
from tests.support.waiting import wait_until

CANARY = "canary-7f3a9c-never-log-me"

RUNBOOK = """\
version: 1
name: cycle
match:
  - alertname = "CycleTest"
steps:
  - id: look
    type: log
    with: {{message: "checking with {{{{ secret('kv/canary#token') }}}}"}}
  - id: health
    type: http.request
    with: {{method: GET, url: "{health}"}}
  - id: fix
    type: http.request
    approval: {{approvers: {{slack_usergroups: [sre-oncall]}}, timeout: 10m}}
    with:
      method: POST
      url: "{fix}"
      headers: {{Authorization: "Bearer {{{{ secret('kv/canary#token') }}}}"}}
      json: {{service: "{{{{ alert.labels.service }}}}"}}
"""


@dataclass
class Cycle:
    srv: RunbotServer
    fake: FakeSlack
    target: HttpTarget
    run: dict[str, Any]


def start(tmp_path: Path, runbooks_dir: Path, **env: Any) -> tuple[RunbotServer, FakeSlack, HttpTarget]:
    """The fake Slack, a target and the server (not started: the caller enters them)."""
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(yaml.safe_dump({"kv/canary": {"token": CANARY}}))
    fake = standard_fake()
    target = HttpTarget()
    target.route("/health", Reply(json={"ok": True}))
    target.route("/fix", Reply(json={"fixed": True}), method="POST")
    fake.start()
    target.start()
    write_runbook(runbooks_dir, "cycle", RUNBOOK.format(health=target.url("/health"), fix=target.url("/fix")))
    settings = dict(
        secrets_provider="file", secrets_file=str(secrets), debug_worker_hooks="true",
        http_allow_hosts=json.dumps([target.netloc]), http_allow_cidrs=json.dumps(["127.0.0.0/8"]),
        slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, slack_api_url=fake.api_url,
        slack_default_channel="#ops", slack_outbox_poll="0.05", slack_run_allow=json.dumps({"*": ["sre-oncall"]}),
    )  # fmt: skip
    settings.update(env)
    return RunbotServer(tmp_path / "srv", runbooks_dir, **settings), fake, target


def run_cycle(srv: RunbotServer, fake: FakeSlack, target: HttpTarget) -> dict[str, Any]:
    """Alert, approval click, remediation, resolve; returns the run as the API shows it."""
    a = alert("CycleTest", instance="db-1", service="checkout")
    fake.fail("chat.postMessage", status=429, times=1, retry_after=0.2)  # Slack's rate limit, once
    assert srv.post(payload(a)).status_code == 200
    approval = wait_until(lambda: next((m for m in fake.messages() if APPROVE_ACTION in str(m.blocks)), None),
                          timeout=30, what="the approval request in Slack")  # fmt: skip
    run = srv.api("/api/v1/runs")["runs"][0]
    body = interactive_body(block_action_payload(APPROVE_ACTION, Bot.approval_id(approval), user_id=ALICE.id,
                                                 user_name=ALICE.name, response_url=fake.response_url(),
                                                 message_ts=approval.ts))  # fmt: skip
    r = httpx.post(
        srv.url + "/slack/events", content=body, headers={"Content-Type": FORM, **sign(body)}, timeout=10
    )
    assert r.status_code == 200, r.text
    wait_until(lambda: srv.api(f"/api/v1/runs/{run['id']}")["status"] == "succeeded", timeout=30,
               what="the approved run to finish")  # fmt: skip
    assert srv.post(payload(resolved(a))).status_code == 200
    wait_until(lambda: srv.api("/api/v1/incidents")["incidents"][0]["status"] == "resolved", timeout=20,
               what="the incident resolved")  # fmt: skip
    assert target.calls("/fix", "POST") == 1
    return srv.api(f"/api/v1/runs/{run['id']}")
