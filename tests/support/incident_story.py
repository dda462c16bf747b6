"""One realistic incident, recorded by the real engine, for the audit export and postmortem tests.

    story = tell_story(make_runtime, runbooks_dir, tmp_path, db_url)

An incident with two alerts (inserted as the intake would), one run of `api-high-error-rate` that runs
two diagnostics (a graph snapshot that keeps a PNG, and an HTTP health check), a rollback approved by
alice and bob (it calls the deployer with a Vault-style secret header, then verifies), and a restart
denied by carol; then both alerts resolve and the incident resolves. A manual run of another runbook,
outside the incident, adds events that incident-filtered exports must leave out. The deployer and the
health endpoint are a real local HTTP server; the secret comes from a secrets file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from runbot.domain import RunStatus, StepKind
from runbot.engine.state import INCIDENTS
from runbot.steps.base import Params, Step, StepContext, StepResult
from runbot.store import tables
from runbot.store.types import utcnow
from tests.conftest import write_runbook
from tests.engine.helpers import drive, start
from tests.support.http_target import HttpTarget, Reply

ALERTS = tables.Alert.__table__
SECRET = "dpl-7f1c9e2a-S3cret-Token"  # never printed; tests assert it appears nowhere
ALICE, BOB, CAROL = ("U024ALICE", "alice"), ("U024BOBBY", "bob"), ("U024CAROL", "carol")


def tiny_png(width: int = 6, height: int = 4) -> bytes:
    """A valid RGB PNG of a red bar, small enough to read in a test failure."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\xd0\x30\x30" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PNG = tiny_png()


class SnapshotParams(Params):
    title: str


class GraphSnapshot(Step[SnapshotParams]):
    """A diagnostic plugin that keeps a graph, as prometheus.graph does (without needing Prometheus)."""

    type = "test.graph"
    kind = StepKind.DIAGNOSTIC
    Params = SnapshotParams

    async def run(self, params: SnapshotParams, ctx: StepContext) -> StepResult:
        ctx.attach("error_rate.png", "image/png", PNG)
        return StepResult(output={"title": params.title, "max_ratio": 0.12}, summary="5xx ratio peaked at 12%")


@dataclass
class Story:
    rt: Any
    incident_id: str
    run_id: str
    noise_run_id: str
    alert_ids: list[str]
    target_calls: dict[str, int]
    times: dict[str, datetime] = field(default_factory=dict)


RUNBOOK = """
    name: api-high-error-rate
    owner: team-api
    description: 5xx ratio above SLO
    match: ['alertname = "HighErrorRate"']
    steps:
      - id: error_graph
        type: test.graph
        with: {{title: "5xx ratio, last hour"}}
      - id: health
        type: http.request
        with: {{method: GET, url: "{base}/healthz"}}
      - id: rollback
        name: Roll back the last deploy
        type: http.request
        approval:
          approvers: {{slack_users: [{alice}, {bob}]}}
          min_approvals: 2
        with:
          method: POST
          url: "{base}/rollback"
          headers: {{Authorization: "Bearer {{{{ secret('kv/deployer#token') }}}}"}}
          json: {{service: api}}
        verify:
          type: http.request
          with: {{method: GET, url: "{base}/healthz"}}
      - id: restart_all
        name: Restart every api pod
        type: http.request
        approval: {{on_deny: skip}}
        with: {{method: POST, url: "{base}/restart"}}
"""

NOISE = """
    name: housekeeping-check
    steps:
      - id: note
        type: log
        with: {message: routine check}
"""


def _alert(alert_id: str, name: str, starts: datetime, received: datetime, incident_id: str, **labels: str) -> dict[str, Any]:
    return {"id": alert_id, "fingerprint": f"fp-{alert_id}", "starts_at": starts, "ends_at": None, "status": "firing",
            "alertname": name, "labels": {"alertname": name, **labels},
            "annotations": {"summary": f"{name} on api", "description": "see the dashboard"},
            "generator_url": "http://prometheus.example/graph", "incident_id": incident_id, "receiver": "runbot",
            "received_at": received, "updated_at": received, "matched": True}


def tell_story(make_runtime: Any, runbooks_dir: Path, tmp_path: Path, db_url: str | None = None, **settings: Any) -> Story:
    secrets_file = tmp_path / "secrets.yaml"
    secrets_file.write_text(f'kv/deployer: {{token: "{SECRET}"}}\n')
    with HttpTarget() as srv:
        srv.route("/healthz", Reply(json={"status": "ok"}))
        srv.route("/rollback", Reply(json={"rolled_back": "api@v41"}), method="POST")
        srv.route("/restart", Reply(json={"restarted": 12}), method="POST")
        write_runbook(runbooks_dir, "api-high-error-rate", RUNBOOK.format(base=srv.base_url, alice=ALICE[0], bob=BOB[0]))
        write_runbook(runbooks_dir, "housekeeping-check", NOISE)
        settings = {"http_allow_hosts": [srv.netloc], "http_allow_cidrs": ["127.0.0.1/32"], "secrets_provider": "file",
                    "secrets_file": secrets_file, "postmortem_auto": False, **settings}
        rt = make_runtime(db_url, **settings)
        rt.registry.register(GraphSnapshot)
        assert rt.catalog.reload() == [], rt.catalog.problems

        t0 = utcnow()
        inc = "inc-api-5xx"
        times = {"a1_start": t0 - timedelta(minutes=10), "a1_received": t0 - timedelta(minutes=9),
                 "a2_start": t0 - timedelta(minutes=8), "a2_received": t0 - timedelta(minutes=7, seconds=30)}
        a1 = _alert("al-5xx", "HighErrorRate", times["a1_start"], times["a1_received"], inc, service="api", severity="critical")
        a2 = _alert("al-lat", "HighLatency", times["a2_start"], times["a2_received"], inc, service="api", severity="warning")
        with rt.db.tx() as conn:
            conn.execute(insert(INCIDENTS).values(
                id=inc, group_key="{}:{alertname=~\"High.*\"}", status="open", title="api: 5xx ratio above SLO",
                severity="critical", labels={"service": "api", "env": "prod"}, opened_at=times["a1_received"],
                resolved_at=None, updated_at=times["a1_received"]))
            conn.execute(insert(ALERTS), [a1, a2])

        noise = start(rt, "housekeeping-check", requester="cli:ops", manual=True)
        assert drive(rt, noise) is RunStatus.SUCCEEDED
        run_id = start(rt, "api-high-error-rate", alert={"labels": a1["labels"], "annotations": a1["annotations"]},
                       alert_id=a1["id"], incident_id=inc)  # fmt: skip
        assert drive(rt, run_id) is RunStatus.WAITING
        (appr,) = rt.engine.pending_approvals(run_id)
        rt.engine.vote(appr["id"], ALICE[0], True, user_name=ALICE[1])
        rt.engine.vote(appr["id"], BOB[0], True, user_name=BOB[1])
        assert drive(rt, run_id) is RunStatus.WAITING
        (appr,) = rt.engine.pending_approvals(run_id)
        rt.engine.vote(appr["id"], CAROL[0], False, user_name=CAROL[1], reason="too broad for a 5xx spike")
        assert drive(rt, run_id) is RunStatus.SUCCEEDED

        resolved = utcnow()
        times["resolved"] = resolved
        with rt.db.tx() as conn:
            conn.execute(update(ALERTS).where(ALERTS.c.incident_id == inc).values(status="resolved", ends_at=resolved,
                                                                                 updated_at=resolved))  # fmt: skip
            conn.execute(update(INCIDENTS).where(INCIDENTS.c.id == inc).values(status="resolved", resolved_at=resolved,
                                                                               updated_at=resolved))  # fmt: skip
        calls = {p: srv.calls(p) for p in ("/healthz", "/rollback", "/restart")}
        auth = srv.last("/rollback").header("Authorization") if calls["/rollback"] else None
    assert auth == f"Bearer {SECRET}", "the deployer must have received the real secret"
    return Story(rt, inc, run_id, noise, [a1["id"], a2["id"]], calls, times)
