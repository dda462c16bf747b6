"""A whole runbot (engine + web server + Slack adapter) on a free port, wired to a fake Slack and target.

    bot = bots.start({"api-errors": RUNBOOK})       # real uvicorn, real engine thread, real SQLite file
    run_id = bot.alert_run("api-errors", labels={...})
    appr = bot.wait_approval(run_id)                 # the approval message as the fake Slack got it
    resp, answer = bot.click(APPROVE_ACTION, appr.id, ALICE)
    bot.wait_run(run_id, "succeeded")
    bot.restart()                                    # same data dir, new process state
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from sqlalchemy import select

from runbot.adapters.slack.blocks import APPROVE_ACTION
from runbot.app import Runtime, build_runtime, create_app
from runbot.engine.state import APPROVALS, RUNS
from runbot.secrets.local import FileSecretProvider
from runbot.settings import Settings
from tests.support.fake_slack import (
    BOT_TOKEN,
    FORM,
    SIGNING_SECRET,
    FakeSlack,
    Message,
    block_action_payload,
    form_body,
    interactive_body,
    sign,
    slash_command_fields,
)
from tests.support.http_target import HttpTarget
from tests.support.ports import free_port

DEPLOY_TOKEN = "s3cr3t-deploy-token-value"  # the secret a remediation uses; must never reach Slack


@dataclass(frozen=True)
class User:
    id: str
    name: str
    team: str = "T0TEAM"


ALICE = User("U0ALICE", "alice")  # in @sre-oncall, operator
BOB = User("U0BOB", "bob")  # in @sre-oncall
CAROL = User("U0CAROL", "carol")  # in no group
MALLORY = User("U0MALLORY", "mallory", team="T0OTHER")  # another workspace (Slack Connect guest)


def standard_fake() -> FakeSlack:
    fake = FakeSlack()
    fake.add_channel("C0OPS", "ops").add_channel("C0ESC", "sre-escalations").add_channel("C0API", "team-api")
    for u in (ALICE, BOB, CAROL, MALLORY):
        fake.add_user(u.id, u.name, team_id=u.team)
    fake.add_usergroup("S0SRE", "sre-oncall", [ALICE.id, BOB.id])
    fake.add_usergroup("S0LEADS", "sre-leads", [CAROL.id])
    return fake


def runbook(name: str, steps: list[dict[str, Any]], **extra: Any) -> str:
    doc = {"version": 1, "name": name, "description": f"{name} for tests", "owner": "team-api",
           "match": ['alertname = "HighErrorRate"'], **extra, "steps": steps}  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False)


def diagnostic(target: HttpTarget, sid: str = "health") -> dict[str, Any]:
    return {"id": sid, "type": "http.request", "with": {"method": "GET", "url": target.url("/health")}}


def remediation(target: HttpTarget, sid: str = "rollback", **approval: Any) -> dict[str, Any]:
    appr = {"approvers": {"slack_usergroups": ["sre-oncall"]}, "timeout": "10m", **approval}
    return {"id": sid, "type": "http.request", "name": "Roll back the last deploy", "approval": appr,
            "with": {"method": "POST", "url": target.url("/rollback"),
                     "headers": {"Authorization": "Bearer {{ secret('kv/deployer#token') }}"},
                     "json": {"service": "{{ alert.labels.service }}"}}}  # fmt: skip


class _Server:
    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def start(self) -> None:
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


class Bot:
    def __init__(self, root: Path, fake: FakeSlack, target: HttpTarget, books: dict[str, str],
                 overrides: dict[str, Any]) -> None:  # fmt: skip
        self.home = root
        self.fake = fake
        self.target = target
        self.books_dir = root / "runbooks"
        self.books_dir.mkdir(parents=True, exist_ok=True)
        for name, text in books.items():
            (self.books_dir / f"{name}.yaml").write_text(text)
        secrets = root / "secrets.yaml"
        secrets.write_text(yaml.safe_dump({"kv/deployer": {"token": DEPLOY_TOKEN}}))
        self.secrets_file = secrets
        self.overrides = overrides
        self.server: _Server | None = None
        self.rt: Runtime
        self.url = ""

    def settings(self) -> Settings:
        base: dict[str, Any] = dict(
            data_dir=self.home / "data", runbooks_dir=self.books_dir, poll_interval=0.05, lease_seconds=5,
            engine_workers=4, slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET,
            slack_api_url=self.fake.api_url, slack_default_channel="#ops", slack_escalation_channel="#sre-escalations",
            slack_outbox_poll=0.05, slack_rate_scale=20.0, slack_run_allow={"*": ["sre-oncall"]}, slack_operators=[ALICE.id],
            http_allow_hosts=[self.target.netloc], http_allow_cidrs=["127.0.0.0/8"],
        )  # fmt: skip
        base.update(self.overrides)
        return Settings(**base)

    def start(self) -> Bot:
        self.rt = build_runtime(self.settings(), secrets=FileSecretProvider(self.secrets_file))
        assert not self.rt.catalog.problems, [str(p) for p in self.rt.catalog.problems]
        port = free_port()
        self.server = _Server(create_app(self.rt), port)
        self.server.start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> Bot:
        self.stop()
        return self.start()

    @property
    def svc(self) -> Any:
        return self.server.server.config.app.state.slack if self.server else None  # type: ignore[union-attr]

    # ---- runs ------------------------------------------------------------------------------------------------

    def alert_run(self, name: str, *, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                  incident_id: str | None = None, requester: str = "system") -> str:  # fmt: skip
        book = self.rt.catalog.get(name)
        assert book is not None, name
        alert = {"labels": {"alertname": "HighErrorRate", "service": "checkout", "severity": "critical",
                            **(labels or {})},
                 "annotations": {"summary": "5xx ratio above SLO", **(annotations or {})}, "status": "firing",
                 "fingerprint": uuid.uuid4().hex[:16], "startsAt": "2026-11-22T10:00:00Z", "endsAt": None,
                 "generatorURL": "http://prometheus.example/graph?g0.expr=up"}  # fmt: skip
        return self.rt.engine.create_run(book, alert=alert, incident_id=incident_id, requester=requester)

    def run_status(self, run_id: str) -> str:
        with self.rt.db.read() as conn:
            return str(conn.execute(select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar_one())

    def wait_run(self, run_id: str, *statuses: str, timeout: float = 15.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.run_status(run_id)
            if st in statuses:
                return st
            time.sleep(0.03)
        raise AssertionError(f"run {run_id} is {self.run_status(run_id)}, not {statuses} after {timeout}s")

    def approval(self, run_id: str) -> dict[str, Any]:
        with self.rt.db.read() as conn:
            return dict(conn.execute(select(APPROVALS).where(APPROVALS.c.run_id == run_id)).mappings().one())

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = predicate()
            if got:
                return got
            time.sleep(0.03)
        raise AssertionError(f"{what} not reached in {timeout}s; Slack calls: {self.fake.methods()}")

    # ---- what Slack shows -------------------------------------------------------------------------------------

    def root(self, run_id: str) -> Message:
        def find() -> Message | None:
            return next((m for m in self.fake.messages() if m.thread_ts is None and run_id in m.all_text()), None)

        msg: Message = self.wait_for(find, what=f"root message of {run_id}")
        return msg

    def approval_message(self, run_id: str) -> Message:
        def find() -> Message | None:
            return next((m for m in self.fake.messages() if m.thread_ts is not None and run_id in m.all_text()
                         and APPROVE_ACTION in str(m.blocks)), None)  # fmt: skip

        msg: Message = self.wait_for(find, what=f"approval message of {run_id}")
        return msg

    @staticmethod
    def approval_id(msg: Message) -> str:
        for b in msg.blocks:
            for el in b.get("elements", []):
                if el.get("action_id") == APPROVE_ACTION:
                    return str(el["value"])
        raise AssertionError("no approve button")

    # ---- requests as Slack sends them ---------------------------------------------------------------------------

    def post(self, body: bytes, ctype: str = FORM, *, signed: bool = True, timestamp: int | None = None,
             headers: dict[str, str] | None = None, secret: str = SIGNING_SECRET) -> httpx.Response:  # fmt: skip
        h = {"Content-Type": ctype, **(sign(body, secret, timestamp) if signed else {}), **(headers or {})}
        return httpx.post(self.url + "/slack/events", content=body, headers=h, timeout=10)

    def command(self, text: str, user: User = ALICE, **kw: Any) -> tuple[httpx.Response, str]:
        rurl = self.fake.response_url()
        fields = slash_command_fields(text, user_id=user.id, user_name=user.name, team_id=user.team,
                                      response_url=rurl, **kw)  # fmt: skip
        return self.post(form_body(fields)), rurl

    def click(self, action_id: str, approval_id: str, user: User = ALICE, **kw: Any) -> tuple[httpx.Response, str]:
        rurl = self.fake.response_url()
        payload = block_action_payload(action_id, approval_id, user_id=user.id, user_name=user.name,
                                       team_id="T0TEAM", user_team_id=user.team, response_url=rurl, **kw)  # fmt: skip
        return self.post(interactive_body(payload)), rurl

    def answers(self, rurl: str) -> list[dict[str, Any]]:
        path = rurl.split("127.0.0.1", 1)[1].split("/", 1)[1]
        return [c.args for c in self.fake.calls_to("response_url") if c.path == "/" + path]

    def answer(self, rurl: str, timeout: float = 10.0) -> str:
        got = self.wait_for(lambda: self.answers(rurl), timeout, what=f"an answer on {rurl}")
        return str(got[-1].get("text"))


class Bots:
    """Starts bots for a test and always stops them (and the fake servers) afterwards."""

    def __init__(self, root: Path, fake: FakeSlack, target: HttpTarget) -> None:
        self.home = root
        self.fake = fake
        self.target = target
        self.started: list[Bot] = []

    def start(self, books: dict[str, str], **overrides: Any) -> Bot:
        bot = Bot(self.home / f"bot{len(self.started)}", self.fake, self.target, books, overrides)
        self.started.append(bot)
        return bot.start()

    def stop_all(self) -> None:
        for b in self.started:
            b.stop()
