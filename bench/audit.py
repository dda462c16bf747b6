"""Audit export benchmark: 1,000,000 events to JSONL and CSV; events/s and peak memory per export.

    .venv/bin/python bench/audit.py                      # 1M events in a temporary SQLite file
    .venv/bin/python bench/audit.py --events 200000 --verify
    .venv/bin/python bench/audit.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

Events are generated straight into the audit table with a valid hash chain (a realistic mix of run, step
and approval events). Each export runs in a fresh child process so its peak RSS (ru_maxrss) is the
export's own, not the generator's. Targets: >= 50,000 events/s and < 200 MB peak RSS. The rate per CPU
second is printed too: on a busy machine it shows what the export costs regardless of contention.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, update

TARGET_RATE = 50_000
TARGET_RSS_MB = 200


def generate(url: str, n: int, batch: int = 20_000) -> float:
    from runbot.audit import log as audit
    from runbot.store.db import Database

    db = Database(url)
    db.upgrade()
    t0 = time.perf_counter()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    prev, seq = audit.GENESIS, 0
    kinds = [
        ("run.created", None, "pending", {"params": {"service": "api", "threshold": 0.05}, "manual": False}),
        ("step.started", "error_ratio", None, {"attempt": 1, "type": "prometheus.query",
                                               "params": {"query": "sum(rate(http_requests_total[5m]))"}}),
        ("step.succeeded", "error_ratio", "succeeded", {"attempt": 1, "summary": "0.12", "duration_ms": 41}),
        ("approval.requested", "rollback", "pending", {"approval_id": "ap_x", "approvers": ["sre-oncall"],
                                                       "params": {"url": "https://deployer/rollback",
                                                                  "headers": {"Authorization": "Bearer ****(kv/d#t)"}}}),
        ("approval.approved", "rollback", "approved", {"approval_id": "ap_x", "user_id": "U024BE7LH",
                                                       "user_name": "alice", "decision": "approve"}),
        ("step.failed", "rollback", "failed", {"attempt": 1, "error": "HTTP 503 from deployer"}),
        ("run.finished", None, "failed", {"reason": "step rollback failed"}),
    ]
    with db.tx() as conn:
        conn.execute(insert(audit.HEAD).values(id=1, seq=0, hash=audit.GENESIS))
    while seq < n:
        rows = []
        for _ in range(min(batch, n - seq)):
            seq += 1
            action, step, outcome, details = kinds[seq % len(kinds)]
            row = {"seq": seq, "ts": start + timedelta(milliseconds=seq * 10), "actor": "U024BE7LH" if "approved" in action else "system",
                   "action": action, "run_id": f"r{seq // 7:010x}", "step_id": step, "incident_id": f"inc{seq // 70}",
                   "runbook": "api-high-error-rate", "runbook_version": "0123456789ab", "outcome": outcome,
                   "details": details, "prev_hash": prev}  # fmt: skip
            row["hash"] = prev = audit.event_hash(row)
            rows.append(row)
        with db.tx() as conn:
            conn.execute(insert(audit.EVENTS), rows)
            conn.execute(update(audit.HEAD).where(audit.HEAD.c.id == 1).values(seq=seq, hash=prev))
    db.dispose()
    return time.perf_counter() - t0


def child(url: str, fmt: str, out: str, verify: bool) -> None:
    """Run one export (and optionally its verification) and report time and peak RSS as JSON."""
    from runbot.audit.export import verify_export_file, write_export
    from runbot.store.db import Database

    db = Database(url)
    t0, c0 = time.perf_counter(), time.process_time()
    with open(out, "w", encoding="utf-8", newline="") as f:
        tally = write_export(db, fmt, f)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    result: dict[str, object] = {"format": fmt, "events": tally.count, "seconds": secs, "cpu_seconds": cpu,
                                 "bytes": os.path.getsize(out)}  # fmt: skip
    if verify and fmt == "jsonl":
        t1 = time.perf_counter()
        v = verify_export_file(out)
        result.update(verify_ok=v.ok, verify_seconds=time.perf_counter() - t1)
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    db.dispose()
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--database-url", help="default: a temporary SQLite file")
    ap.add_argument("--formats", default="jsonl,csv")
    ap.add_argument("--verify", action="store_true", help="also time offline verification of the JSONL export")
    ap.add_argument("--child", nargs=2, metavar=("FORMAT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.database_url, args.child[0], args.child[1], args.verify)
        return
    with tempfile.TemporaryDirectory(prefix="runbot-bench-") as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        gen = generate(url, args.events)
        print(f"generated {args.events:,} chained events in {gen:.1f}s")
        ok = True
        for fmt in args.formats.split(","):
            out = str(Path(tmp) / f"export.{fmt}")
            cmd = [sys.executable, __file__, "--database-url", url, "--child", fmt, out] + (["--verify"] if args.verify else [])
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            rate = res["events"] / res["seconds"]
            good = rate >= TARGET_RATE and res["max_rss_mb"] < TARGET_RSS_MB
            ok &= good
            line = (f"{fmt:>5}: {res['events']:,} events in {res['seconds']:.2f}s = {rate:,.0f} events/s "
                    f"({res['events'] / res['cpu_seconds']:,.0f}/s of CPU time), peak RSS {res['max_rss_mb']:.0f} MB, "
                    f"{res['bytes'] / 1e6:.0f} MB written")
            if "verify_seconds" in res:
                line += f"; verify {'OK' if res['verify_ok'] else 'FAILED'} in {res['verify_seconds']:.1f}s"
            print(line + ("" if good else "  (below target)"))
        print(f"target: >= {TARGET_RATE:,} events/s and < {TARGET_RSS_MB} MB peak RSS: {'met' if ok else 'NOT met'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
