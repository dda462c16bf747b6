"""A rolling update on PostgreSQL: SIGTERM to the replica holding a run hands the run to a live replica at
once (not after the 30 s lease expires). The step in flight finishes and commits first, so nothing is in
doubt; a run parked in a durable `wait` continues on the other replica when its timer is due."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import write_runbook
from tests.support.http_target import HttpTarget, Reply
from tests.support.runbot_serve import RUNBOT, Replica, clean_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Db:
    """What the test reads back: the run, its steps, who holds it."""

    def __init__(self, url: str) -> None:
        self.eng = sa.create_engine(url)

    def run(self, run_id: str) -> sa.RowMapping:
        with self.eng.connect() as c:
            return c.execute(sa.text("SELECT status, lease_owner, reason FROM runs WHERE id = :r"),
                             {"r": run_id}).mappings().one()

    def steps(self, run_id: str) -> list[tuple[str, int, str]]:
        with self.eng.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(
                "SELECT step_id, attempt, status FROM step_executions WHERE run_id = :r ORDER BY id"), {"r": run_id})]


def _env(pg_url: str, tmp_path: Path, runbooks: Path, target: HttpTarget) -> dict[str, str]:
    # the default 30 s lease on purpose: a handover faster than that is the drain's doing
    return clean_env(database_url=pg_url, data_dir=str(tmp_path / "data"), runbooks_dir=str(runbooks),
                     poll_interval="0.2", engine_loops_pg="2", log_level="INFO",
                     http_allow_hosts=json.dumps([f"127.0.0.1:{target.port}"]),
                     http_allow_cidrs=json.dumps(["127.0.0.1/32"]))


def _create(env: dict[str, str], runbook: str) -> str:
    out = subprocess.run([RUNBOT, "run", runbook, "--detach"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[1]


def _terminate(replica: Replica) -> float:
    assert replica.proc is not None
    t0 = time.monotonic()
    replica.proc.send_signal(signal.SIGTERM)
    return t0


@pytest.fixture
def target():
    with HttpTarget() as t:
        yield t


def test_sigterm_mid_step_finishes_the_step_and_hands_the_run_over_in_under_5s(pg_url, tmp_path, runbooks_dir,
                                                                                target):
    target.route("/remediate", Reply(200, json={"done": True}, delay=3.0), method="POST")
    write_runbook(runbooks_dir, "handover", f"""
        name: handover
        unattended: {{reason: "handover test: remediation runs without a human"}}
        steps:
          - id: remediate
            type: http.request
            with: {{method: POST, url: "{target.url('/remediate')}", json: {{service: api}}}}
          - id: after
            type: log
            with: {{message: continued elsewhere}}
    """)
    env = _env(pg_url, tmp_path, runbooks_dir, target)
    db = Db(pg_url)
    replicas = {name: Replica(name, env, tmp_path) for name in ("a", "b")}
    try:
        for r in replicas.values():
            r.start()
        run_id = _create(env, "handover")
        wait_until(lambda: target.calls("/remediate") == 1, timeout=30, what="the remediation in flight")
        holder = str(wait_until(lambda: db.run(run_id)["lease_owner"], timeout=5, what="the holder")).split("/")[0]
        other = "b" if holder == "a" else "a"
        t0 = _terminate(replicas[holder])
        wait_until(lambda: db.run(run_id)["status"] == "succeeded", timeout=30, what=f"the run to finish on {other}")
        total = time.monotonic() - t0
        proc = replicas[holder].proc
        assert proc is not None and proc.wait(30) in (0, -signal.SIGTERM), replicas[holder].log_tail()
        finished_by = [name for name, r in replicas.items() if "continued elsewhere" in r.log_text()]
        with db.eng.connect() as c:
            handover = c.execute(sa.text(
                "SELECT extract(epoch FROM max(started_at) FILTER (WHERE step_id = 'after')"
                " - max(finished_at) FILTER (WHERE step_id = 'remediate')) FROM step_executions WHERE run_id = :r"),
                {"r": run_id}).scalar_one()
    finally:
        for r in replicas.values():
            r.stop()
        db.eng.dispose()
    assert finished_by == [other], "the terminating replica went on with the run instead of handing it over"
    # from the terminating replica's last commit to the next step on the other one; the lease is 30 s
    assert handover < 5.0, f"handover took {handover:.1f}s"
    assert total < 20.0, f"the run finished {total:.1f}s after SIGTERM"
    assert db.steps(run_id) == [("remediate", 1, "succeeded"), ("after", 1, "succeeded")]
    assert target.calls("/remediate") == 1  # finished once by the terminating replica: not repeated, not in doubt


def test_sigterm_to_the_replica_that_parked_a_durable_wait_lets_another_finish_it(pg_url, tmp_path, runbooks_dir,
                                                                                 target):
    write_runbook(runbooks_dir, "waits", """
        name: waits
        steps:
          - id: pause
            type: wait
            with: {duration: 15s}
          - id: after
            type: log
            with: {message: woke up elsewhere}
    """)
    env = _env(pg_url, tmp_path, runbooks_dir, target)
    db = Db(pg_url)
    a, b = Replica("a", env, tmp_path), Replica("b", env, tmp_path)
    try:
        a.start()
        run_id = _create(env, "waits")
        wait_until(lambda: db.run(run_id)["status"] == "waiting", timeout=30, what="the run parked on a")
        b.launch()  # a rolling update: the new replica starts while the old one is told to go
        _terminate(a)
        assert a.proc is not None and a.proc.wait(30) in (0, -signal.SIGTERM), a.log_tail()
        b.wait_ready(60)
        with db.eng.connect() as c:
            wake_at, now = c.execute(sa.text("SELECT wake_at, now() FROM runs WHERE id = :r"), {"r": run_id}).one()
        assert wake_at is not None and now < wake_at, "b was ready only after the wait: too slow a machine"
        wait_until(lambda: db.run(run_id)["status"] == "succeeded", timeout=30, what="the run to finish on b")
        with db.eng.connect() as c:
            late = c.execute(sa.text("SELECT extract(epoch FROM finished_at - :w) FROM runs WHERE id = :r"),
                             {"r": run_id, "w": wake_at}).scalar_one()
        finished_on_b = "woke up elsewhere" in b.log_text()
    finally:
        a.stop()
        b.stop()
        db.eng.dispose()
    assert finished_on_b
    assert late < 5.0, f"b finished the run {late:.1f}s after its wait was over"
    assert db.steps(run_id) == [("pause", 1, "succeeded"), ("after", 1, "succeeded")]
