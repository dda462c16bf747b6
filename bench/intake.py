"""Webhook intake throughput and acknowledgement latency, next to a bare endpoint of the same framework.

Run: .venv/bin/python bench/intake.py [--duration 8] [--concurrency 32] [--rate 1000] [--sizes 1,50] [--dup 0.01]

Starts two servers on free loopback ports, each a real subprocess under the same uvicorn settings:
  runbot  `runbot serve` (SQLite in a temp dir, one runbook matching every alert, the intake worker on):
          every notification is validated and committed before the 2xx, then unpacked into alerts, deduped
          and matched off the request path (storm limits apply)
  bare    a FastAPI app whose POST /webhooks/alertmanager parses the JSON and answers 200, storing nothing
An aiohttp load generator (this process) posts Alertmanager v4 payloads of 1 and 50 alerts, 1% of them
exact re-deliveries, to each target in two ways:
  rate    open loop: --rate alerts/s on a fixed schedule (latency at that load; counted from the send time)
  max     closed loop: --concurrency requests always in flight (the most it sustains), --repeat alternating
          runs per target, best kept (the machine may be shared)
Between runbot measurements it waits until intake has caught up, so one phase's backlog does not
burden the next. Prints alerts/s and p50/p99 acknowledgement latency, the runbot/bare ratio, how fast the
intake worker worked off the largest backlog, and checks that runbot stored every unique alert exactly once. Exits 1 when a target of the issue is missed
(>= 1000 alerts/s; p99 < 50 ms at --rate; >= 40% of the bare endpoint's throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

TOKEN = "bench-webhook-token"
RUNBOOK = """\
version: 1
name: bench-storm
match:
  - alertname =~ "Bench.*"
steps:
  - id: noop
    type: noop
"""
ALERT = ('{{"status":"firing","labels":{{"alertname":"BenchAlert","instance":"host-{n}","job":"node","severity":"warning"}},'
         '"annotations":{{"summary":"bench alert {n}"}},"startsAt":"2024-05-01T10:00:00.{us:06d}Z",'
         '"endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus.example/graph","fingerprint":"{fp:016x}"}}')  # fmt: skip
PAYLOAD = ('{{"version":"4","groupKey":"{{}}:{{alertname=\\"BenchAlert\\"}}","truncatedAlerts":0,"status":"firing",'
           '"receiver":"runbot","groupLabels":{{"alertname":"BenchAlert"}},"commonLabels":{{"alertname":"BenchAlert"}},'
           '"commonAnnotations":{{}},"externalURL":"http://alertmanager.example","alerts":[{alerts}]}}')  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the bare endpoint --------------------------------------------------------------------------------------


def bare_server(port: int) -> None:
    import uvicorn

    app = FastAPI()

    @app.post("/webhooks/alertmanager")
    async def hook(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"status": "ok", "alerts": len(body.get("alerts", []))})

    @app.get("/readyz")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- servers as subprocesses -------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/alertmanager"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited early")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server not ready")


def start_runbot(workdir: Path, database_url: str | None, extra_env: list[str]) -> Server:
    (workdir / "runbooks").mkdir(parents=True)
    (workdir / "runbooks" / "bench.yaml").write_text(RUNBOOK)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update({"RUNBOT_DATA_DIR": str(workdir / "data"), "RUNBOT_RUNBOOKS_DIR": str(workdir / "runbooks"),
                "RUNBOT_PORT": str(port), "RUNBOT_HOST": "127.0.0.1", "RUNBOT_LOG_LEVEL": "ERROR",
                "RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN": TOKEN})  # fmt: skip
    if database_url:
        env["RUNBOT_DATABASE_URL"] = database_url
    env.update(kv.split("=", 1) for kv in extra_env)  # type: ignore[arg-type]
    exe = Path(sys.executable).parent / "runbot"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "runbot.cli.main"]
    log = open(workdir / "runbot.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([*cmd, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_ready(port, proc)
    return Server("runbot", port, proc, workdir)


def start_bare(workdir: Path) -> Server:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_ready(port, proc)
    return Server("bare", port, proc, workdir)


# ---- load generator ---------------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int = 0
    alerts: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    unique: set[tuple[int, int]] = field(default_factory=set)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))] * 1000

    @property
    def alerts_per_s(self) -> float:
        return self.alerts / self.elapsed if self.elapsed else 0.0


class Payloads:
    """Fresh payloads (new fingerprints) with a fraction of exact re-deliveries of recent ones."""

    def __init__(self, size: int, dup: float, seed: int) -> None:
        self.size, self.dup = size, dup
        self.rng = random.Random(seed)
        self.n = seed * 10_000_000
        self.recent: list[tuple[bytes, list[tuple[int, int]]]] = []

    def next(self) -> tuple[bytes, list[tuple[int, int]]]:
        if self.recent and self.rng.random() < self.dup:
            return self.rng.choice(self.recent)
        keys, parts = [], []
        for _ in range(self.size):
            self.n += 1
            fp, us = self.n * 2654435761 % (1 << 63), self.n % 1_000_000
            keys.append((fp, us))
            parts.append(ALERT.format(n=self.n, us=us, fp=fp))
        item = (PAYLOAD.format(alerts=",".join(parts)).encode(), keys)
        self.recent = [*self.recent[-99:], item]
        return item


async def _post(session: object, url: str, body: bytes, headers: dict[str, str]) -> bool:
    import aiohttp

    try:
        async with session.post(url, data=body, headers=headers) as r:  # type: ignore[attr-defined]
            await r.read()
            return bool(r.status == 200)
    except aiohttp.ClientError:
        return False


async def drive(url: str, size: int, *, concurrency: int, duration: float, warmup: float, dup: float, seed: int,
                rate: float | None = None) -> Result:  # fmt: skip
    """Closed loop (`concurrency` requests always in flight: the most it sustains) or, with `rate`
    alerts/s, open loop: requests leave on a fixed schedule whatever the answers do (latency at that load)."""
    import aiohttp

    res = Result()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    gen = Payloads(size, dup, seed)
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + duration

    async def one(session: object, body: bytes, keys: list[tuple[int, int]], t0: float) -> None:
        ok = await _post(session, url, body, headers)
        t1 = time.perf_counter()
        if ok:
            res.unique.update(keys)
        if t0 >= t_measure:
            if ok:
                res.requests += 1
                res.alerts += size
                res.latencies.append(t1 - t0)
            else:
                res.errors += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency if rate is None else 0)) as session:
        if rate is None:
            async def worker() -> None:
                while (t0 := time.perf_counter()) < t_end:
                    body, keys = gen.next()
                    await one(session, body, keys, t0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            interval = size / rate
            tasks = set()
            due = time.perf_counter()
            while due < t_end:
                body, keys = gen.next()
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = asyncio.create_task(one(session, body, keys, due))  # latency counts from the scheduled time
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                due += interval
            if tasks:
                await asyncio.gather(*tasks)
    res.elapsed = time.perf_counter() - t_measure if rate is None else duration
    return res


def wait_drained(db: Path, timeout: float = 300.0) -> tuple[int, float, int]:
    """Until intake has unpacked and matched everything: (alert rows, seconds it took, alerts it had to do)."""
    t0 = time.perf_counter()
    total, pending = stored_alerts(db)
    backlog = backlog_alerts(db)
    while pending and time.perf_counter() - t0 < timeout:
        time.sleep(0.1)
        total, pending = stored_alerts(db)
    return total, time.perf_counter() - t0, backlog


def backlog_alerts(db: Path) -> int:
    """Alerts accepted but not yet through intake: in unpacked deliveries, or stored and not yet matched."""
    con = sqlite3.connect(db)
    try:
        waiting = con.execute("SELECT coalesce(sum(alerts), 0) FROM webhook_deliveries WHERE processed_at IS NULL")
        unmatched = con.execute("SELECT count(*) FROM alerts WHERE pending_since IS NOT NULL")
        return int(waiting.fetchone()[0]) + int(unmatched.fetchone()[0])
    finally:
        con.close()


def stored_alerts(db: Path) -> tuple[int, int]:
    """(alert rows, work still pending: deliveries not unpacked plus alerts not matched) in runbot's SQLite database."""
    con = sqlite3.connect(db)
    try:
        total = con.execute("SELECT count(*) FROM alerts").fetchone()[0]
        pending = con.execute("SELECT count(*) FROM alerts WHERE pending_since IS NOT NULL").fetchone()[0]
        pending += con.execute("SELECT count(*) FROM webhook_deliveries WHERE processed_at IS NULL").fetchone()[0]
        return int(total), int(pending)
    finally:
        con.close()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-server":
        bare_server(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per target and size")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight when measuring throughput")
    ap.add_argument("--rate", type=float, default=1000.0, help="alerts/s offered when measuring latency")
    ap.add_argument("--sizes", default="1,50", help="alerts per payload")
    ap.add_argument("--repeat", type=int, default=2, help="throughput runs per target (alternating; best kept)")
    ap.add_argument("--dup", type=float, default=0.01, help="fraction of exact re-deliveries")
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    ap.add_argument("--env", action="append", default=[], metavar="RUNBOT_X=V", help="extra setting for runbot")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    matching = "runbot_alertmanager_process=false" not in [e.lower() for e in args.env]

    with tempfile.TemporaryDirectory(prefix="runbot-bench-") as tmp:
        work = Path(tmp)
        runbot = start_runbot(work / "runbot", args.database_url, args.env)
        bare = start_bare(work / "bare")
        rows: list[tuple[str, int, str, Result]] = []
        sent: set[tuple[int, int]] = set()
        seed = 0
        try:
            drains: list[tuple[float, int]] = []
            total = -1
            for mode in ("rate", "max"):
                for size in sizes:
                    best: dict[str, Result] = {}
                    for _ in range(args.repeat if mode == "max" else 1):  # alternate, keep each one's best
                        for server in (bare, runbot):
                            seed += 1
                            r = asyncio.run(drive(server.url, size, concurrency=args.concurrency, duration=args.duration,
                                                  warmup=args.warmup, dup=args.dup, seed=seed,
                                                  rate=args.rate if mode == "rate" else None))  # fmt: skip
                            if server.name not in best or r.alerts_per_s > best[server.name].alerts_per_s:
                                best[server.name] = r
                            if server is runbot:
                                sent |= r.unique
                                if not args.database_url:  # let matching catch up: phases must not leak into each other
                                    total, secs, backlog = wait_drained(work / "runbot" / "data" / "runbot.db",
                                                                        timeout=300.0 if matching else 0.0)
                                    drains.append((secs, backlog))
                    rows += [(mode, size, name, best[name]) for name in ("bare", "runbot")]
            drain, backlog = max(drains, default=(0.0, 0))
        finally:
            runbot.stop()
            bare.stop()

    print(f"intake benchmark: {os.cpu_count()} CPU(s), database {'SQLite' if not args.database_url else 'custom'}, "
          f"{args.dup:.0%} re-deliveries, {args.duration:g}s per measurement (after {args.warmup:g}s warm-up)")
    print(f"max = {args.concurrency} requests always in flight (best of {args.repeat} alternating runs); "
          f"rate = {args.rate:g} alerts/s offered on a fixed schedule")
    print(f"{'load':<5} {'size':>4}  {'target':<7} {'req/s':>8} {'alerts/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    failed = []
    by = {(m, s, n): r for m, s, n, r in rows}
    for mode, size, name, r in rows:
        print(f"{mode:<5} {size:>4}  {name:<7} {r.requests / r.elapsed:>8.0f} {r.alerts_per_s:>9.0f} {r.pct(0.5):>7.1f} "
              f"{r.pct(0.99):>7.1f} {r.errors:>6}")  # fmt: skip
    for size in sizes:
        rb, bare_r, at = by[("max", size, "runbot")], by[("max", size, "bare")], by[("rate", size, "runbot")]
        ratio = rb.alerts_per_s / bare_r.alerts_per_s if bare_r.alerts_per_s else 0.0
        print(f"size {size:>2}: runbot sustains {rb.alerts_per_s:.0f} alerts/s = {ratio:.0%} of the bare endpoint "
              f"({bare_r.alerts_per_s:.0f}); at {args.rate:g} alerts/s p99 acknowledgement is {at.pct(0.99):.1f} ms")
        if ratio < 0.40:
            failed.append(f"size {size}: {ratio:.0%} of bare < 40%")
        if rb.alerts_per_s < 1000:
            failed.append(f"size {size}: {rb.alerts_per_s:.0f} alerts/s < 1000")
        if at.pct(0.99) >= 50:
            failed.append(f"size {size}: p99 {at.pct(0.99):.1f} ms >= 50 ms at {args.rate:g} alerts/s")
        if rb.errors or at.errors:
            failed.append(f"size {size}: {rb.errors + at.errors} failed requests")
    if total >= 0:
        ok = total == len(sent)
        print(f"stored: {total} alert rows for {len(sent)} unique alerts sent ({'exactly once' if ok else 'MISMATCH'}); "
              f"intake caught up at most {drain:.1f}s after a measurement ended (a backlog of {backlog} alerts "
              f"unpacked and matched at {backlog / drain if drain else 0:.0f} alerts/s)")  # fmt: skip
        if not ok:
            failed.append("stored alerts do not match the unique alerts sent")
    if failed:
        print("MISSED: " + "; ".join(failed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
