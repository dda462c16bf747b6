"""Slack at real-world scale: a storm of runs against a fake Slack with Slack's published limits.

Part 1 (storm): N incidents at once, each a 60-step run with one approval in the middle. An approver
approves each request as soon as Slack has it. Prints the p50/p99 delay from "approval requested" (the
engine's commit) to the approval message being accepted by Slack, 429s, messages lost (must be 0), the
final state of every root message (must show the run's end), Slack calls per method, and the largest
outbox backlog.

Part 2 (latency): alerts through the Alertmanager webhook at 1 alert/s (each its own incident) and at
50 alerts/s spread over --groups alert groups (an outage: --groups incidents, many runs each), for
--duration seconds, one-step runbook, intake throttling off (every alert starts a run); prints the delay
from an incident's first webhook POST to its first Slack message (p50/p99), the largest outbox backlog
and how long it took to drain after the last alert.

The fake Slack enforces Slack's tiers (Tier 2 20/min, Tier 3 50/min, Tier 4 100/min, bursts of a few
seconds), chat.postMessage at 1/s per channel (bursts of 4) and 600/min per workspace, answering 429 with
Retry-After. Incidents are routed over --channels channels by a `team` label (teams have their own
channels); --channels 1 puts everything in one channel.

Usage: PYTHONPATH=src:. python bench/slack_storm.py [--incidents 20] [--channels 20] [--duration 60]
       [--quick]   (--quick: --duration 10, for a short run)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from tests.adapters.slack.harness import Bot, diagnostic, remediation, runbook, standard_fake
from tests.support.fake_slack import FakeSlack, RateLimits
from tests.support.http_target import HttpTarget, Reply

from runbot.engine.state import APPROVALS, OUTBOX, RUNS
from runbot.observability import configure_logging

TOKEN = "bench-webhook-token"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def fake_with_channels(channels: int) -> FakeSlack:
    fake = standard_fake()
    fake.limiter.limits = RateLimits.slack()
    for i in range(channels):
        fake.add_channel(f"C{i:04d}X", f"team-{i}")
    return fake


def routing(channels: int) -> dict[str, Any]:
    if channels <= 1:
        return {}
    return {"slack_label_channels": {"team": {f"t{i}": f"C{i:04d}X" for i in range(channels)}}}


class Backlog(threading.Thread):
    """Samples the number of undelivered outbox rows."""

    def __init__(self, bot: Bot) -> None:
        super().__init__(daemon=True)
        self.bot = bot
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with self.bot.rt.db.read() as conn:
                n = int(conn.execute(select(func.count()).select_from(OUTBOX)
                                     .where(OUTBOX.c.delivered_at.is_(None))).scalar_one())  # fmt: skip
            self.samples.append((time.monotonic(), n))
            self.peak = max(self.peak, n)
            self.halt.wait(0.25)


def accepted_at(fake: FakeSlack, needle: str) -> float | None:
    for c in fake.calls_to("chat.postMessage", ok_only=True):
        if needle in json.dumps(c.args):
            return c.at
    return None


def storm(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    fake = fake_with_channels(args.channels)
    with fake, HttpTarget() as target:
        target.route("/health", Reply(json={"status": "ok"}))
        target.route("/rollback", Reply(json={"rolled_back": True}), method="POST")
        steps = [diagnostic(target, f"check_{i:02d}") for i in range(59)]
        steps.insert(30, remediation(target))
        bot = Bot(root / "storm", fake, target, {"storm": runbook("storm", steps)},
                  {"slack_rate_scale": 1.0, "slack_outbox_poll": 0.5, "engine_workers": 4, **routing(args.channels)})
        bot.start()
        backlog = Backlog(bot)
        backlog.start()
        t0 = time.monotonic()
        runs = [bot.alert_run("storm", labels={"team": f"t{i % max(1, args.channels)}", "instance": f"i{i}"})
                for i in range(args.incidents)]  # fmt: skip
        delays: dict[str, float] = {}
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            with bot.rt.db.read() as conn:
                pending = conn.execute(select(APPROVALS.c.id, APPROVALS.c.requested_at)
                                       .where(APPROVALS.c.status == "pending")).all()  # fmt: skip
            for aid, requested in pending:
                if aid in delays:
                    continue
                at = accepted_at(fake, aid)
                if at is not None:
                    delays[aid] = at - requested.timestamp()
                    bot.rt.engine.vote(aid, "slack:U0ALICE", True, user_name="alice")
            with bot.rt.db.read() as conn:
                statuses = [r for r in conn.execute(select(RUNS.c.status).where(RUNS.c.id.in_(runs))).scalars()]
                undelivered = conn.execute(select(func.count()).select_from(OUTBOX)
                                           .where(OUTBOX.c.delivered_at.is_(None))).scalar_one()  # fmt: skip
            finished = all(s == "succeeded" for s in statuses)
            roots_done = sum(1 for m in fake.messages() if m.thread_ts is None and "[succeeded]" in m.text)
            if finished and undelivered == 0 and roots_done >= len(runs):
                break
            time.sleep(0.1)
        took = time.monotonic() - t0
        backlog.halt.set()
        with bot.rt.db.read() as conn:
            lost = conn.execute(select(func.count()).select_from(OUTBOX).where(
                OUTBOX.c.last_error.like("dropped%") | OUTBOX.c.last_error.like("not delivered%"))).scalar_one()  # fmt: skip
        roots = {r: next((m.text for m in fake.messages() if m.thread_ts is None and r in m.all_text()), "<none>")
                 for r in runs}  # fmt: skip
        calls = Counter(c.method for c in fake.calls if c.status == 200)
        limited = sum(1 for c in fake.calls if c.status == 429)
        bot.stop()
    per_second: Counter[tuple[str, int]] = Counter()
    for c in fake.calls:
        if c.method == "chat.postMessage" and c.status == 200:
            per_second[(str(c.args.get("channel")), int(c.at))] += 1
    return {
        "incidents": args.incidents, "channels": args.channels, "seconds": round(took, 1),
        "approvals": len(delays), "approval_p50_s": round(pct(list(delays.values()), 0.5), 2),
        "approval_p99_s": round(pct(list(delays.values()), 0.99), 2), "approval_max_s": round(max(delays.values(), default=0), 2),
        "429s": limited, "lost": int(lost) + (args.incidents - len(delays)),
        "roots_showing_end": sum("[succeeded]" in t for t in roots.values()), "roots": len(roots),
        "root_states": sorted(Counter(t.split("]")[0] + "]" for t in roots.values()).items()),
        "calls": dict(calls), "max_posts_per_channel_second": max(per_second.values(), default=0),
        "peak_backlog": backlog.peak,
    }  # fmt: skip


def latency(args: argparse.Namespace, root: Path, rate: float) -> dict[str, Any]:
    fake = fake_with_channels(args.channels)
    with fake, HttpTarget() as target:
        target.route("/health", Reply(json={"status": "ok"}))
        book = runbook("quick", [diagnostic(target)])
        bot = Bot(root / f"lat{rate:g}", fake, target, {"quick": book},
                  {"slack_rate_scale": 1.0, "slack_outbox_poll": 0.5, "alertmanager_webhook_token": TOKEN,
                   "engine_workers": 4, "alertmanager_runs_per_minute": 1e6, "alertmanager_runs_burst": 100_000,
                   "alertmanager_runbook_runs_per_minute": 1e6, "alertmanager_runbook_runs_burst": 100_000,
                   **routing(args.channels)})  # fmt: skip
        bot.start()
        backlog = Backlog(bot)
        backlog.start()
        sent: dict[str, float] = {}
        groups = args.groups if rate > 1 else 0
        client = httpx.Client(base_url=bot.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        n = int(rate * args.duration)
        start = time.monotonic()
        for i in range(n):
            due = start + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            key = f"a{i:05d}{uuid.uuid4().hex[:6]}"
            labels = {"alertname": "HighErrorRate", "service": "checkout", "severity": "critical", "instance": key,
                      "team": f"t{i % max(1, args.channels)}"}  # fmt: skip
            alert = {"status": "firing", "labels": labels, "annotations": {"summary": "bench"},
                     "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                     "generatorURL": "http://prometheus.example/graph", "fingerprint": uuid.uuid4().hex[:16]}  # fmt: skip
            group = f"g{i % groups}" if groups else key
            body = {"version": "4", "groupKey": f'{{}}:{{group="{group}"}}', "truncatedAlerts": 0, "status": "firing",
                    "receiver": "runbot", "groupLabels": {"group": group}, "commonLabels": labels,
                    "commonAnnotations": {}, "externalURL": "http://am.example", "alerts": [alert]}  # fmt: skip
            sent[key] = time.time()
            client.post("/webhooks/alertmanager", json=body)
        storm_end = time.monotonic()
        drained_at = None
        while time.monotonic() < storm_end + args.timeout:
            if backlog.samples and backlog.samples[-1][1] == 0 and backlog.samples[-1][0] > storm_end + 1:
                with bot.rt.db.read() as conn:
                    open_runs = conn.execute(select(func.count()).select_from(RUNS).where(
                        RUNS.c.status.in_(["pending", "running"]))).scalar_one()  # fmt: skip
                if open_runs == 0:
                    drained_at = time.monotonic()
                    break
            time.sleep(0.2)
        backlog.halt.set()
        with bot.rt.db.read() as conn:
            made = conn.execute(select(func.count()).select_from(RUNS)).scalar_one()
            by_incident: dict[str, float] = {}
            stages: dict[str, list[float]] = {"webhook_to_run": [], "run_to_started": []}
            started_at: dict[str, float] = {}
            for inc, alert, created, started in conn.execute(select(RUNS.c.incident_id, RUNS.c.alert,
                                                                    RUNS.c.created_at, RUNS.c.started_at)):  # fmt: skip
                key = ((alert or {}).get("labels") or {}).get("instance")
                if inc and key in sent:
                    by_incident[inc] = min(by_incident.get(inc, float("inf")), sent[key])
                    stages["webhook_to_run"].append(created.timestamp() - sent[key])
                    if started is not None:
                        stages["run_to_started"].append(started.timestamp() - created.timestamp())
                        started_at[inc] = min(started_at.get(inc, float("inf")), started.timestamp())
        first_post: dict[str, float] = {}
        for c in fake.calls_to("chat.postMessage", ok_only=True):
            if c.args.get("thread_ts"):
                continue
            text = json.dumps(c.args)
            for inc in by_incident:
                if inc in text and inc not in first_post:
                    first_post[inc] = c.at
        delays = [first_post[i] - t for i, t in by_incident.items() if i in first_post]
        stages["started_to_first_message"] = [first_post[i] - t for i, t in started_at.items() if i in first_post]
        limited = sum(1 for c in fake.calls if c.status == 429)
        client.close()
        bot.stop()
    return {
        "rate_per_s": rate, "alerts": n, "runs": int(made), "incidents": len(by_incident),
        "incidents_with_a_message": len(delays),
        "p50_ms": round(pct(delays, 0.5) * 1000), "p99_ms": round(pct(delays, 0.99) * 1000),
        "max_ms": round(max(delays, default=0) * 1000), "429s": limited, "peak_backlog": backlog.peak,
        "drained_s_after_storm": round(drained_at - storm_end, 1) if drained_at else None,
        "stage_p50_ms": {k: round(pct(v, 0.5) * 1000) for k, v in stages.items()},
        "stage_p99_ms": {k: round(pct(v, 0.99) * 1000) for k, v in stages.items()},
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--incidents", type=int, default=20)
    p.add_argument("--channels", type=int, default=20)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of alerts in part 2")
    p.add_argument("--groups", type=int, default=20, help="alert groups (incidents) of the 50 alerts/s storm")
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--quick", action="store_true", help="part 2 for 10 s")
    p.add_argument("--skip", choices=["storm", "latency"], default=None)
    args = p.parse_args()
    if args.quick:
        args.duration = 10.0
    configure_logging("ERROR")
    root = Path(tempfile.mkdtemp(prefix="bench-slack-"))
    if args.skip != "storm":
        print("storm:", json.dumps(storm(args, root)))
    if args.skip != "latency":
        for rate in (1.0, 50.0):
            print("latency:", json.dumps(latency(args, root, rate)))


if __name__ == "__main__":
    main()
