"""Measure alert matching: 10,000 alerts against 200 runbooks with regex matchers, then the same with one
pathological regex (`(a+)+$`, exponential on a backtracking engine) matched against long labels.

Run: .venv/bin/python bench/matching.py [--alerts 10000] [--runbooks 200] [--label-length 4096]
Prints alerts matched per second (wall clock) and the p50/p99 CPU time per alert for both sets; exits 1
when the pathological set moves the p99 by more than 2x (RE2 is linear time, so it should not).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

RUNBOOK = """\
version: 1
name: svc-{i}
match:
  - alertname =~ "Svc{i}(Down|Slow|Errors)"
  - severity =~ "(?i)critical|page"
  - instance =~ "web-[0-9]+\\\\.prod\\\\.example", team !~ "(?i)test.*"
steps:
  - type: log
    with: {{message: "hello"}}
"""

PATHOLOGICAL = """\
version: 1
name: pathological
match:
  - description =~ "(a+)+$"
  - alertname =~ ".*"
steps:
  - type: log
    with: {message: "hello"}
"""


def alerts(n: int, runbooks: int, label_length: int, rng: random.Random) -> list[dict[str, str]]:
    out = []
    for _ in range(n):
        k = rng.randrange(runbooks * 2)  # half the alerts name no runbook
        out.append({
            "alertname": f"Svc{k}{rng.choice(['Down', 'Slow', 'Errors', 'Gone'])}",
            "severity": rng.choice(["critical", "CRITICAL", "page", "warning"]),
            "instance": f"web-{rng.randrange(100)}.prod.example",
            "team": rng.choice(["ops", "Test-1", "payments"]),
            "description": "a" * label_length + rng.choice(["b", "!", "a"]),  # the pathological regex's prey
        })  # fmt: skip
    return out


def measure(directory: Path, batch: list[dict[str, str]]) -> tuple[float, float, float, int]:
    from runbot.runbooks.catalog import Catalog

    catalog = Catalog(directory, None)  # type: ignore[arg-type]  # no step registry: matching only
    problems = catalog.reload()
    assert not problems, problems
    for labels in batch:  # one untimed pass: both sets are then measured with warm caches (memoised verdicts)
        catalog.matching(labels)
    times = []
    matched = 0
    start = time.perf_counter()
    for labels in batch:
        # CPU time of this thread: on a shared machine, wall-clock percentiles mostly measure the scheduler
        t = time.thread_time()
        matched += len(catalog.matching(labels))
        times.append(time.thread_time() - t)
    total = time.perf_counter() - start
    times.sort()
    return len(batch) / total, statistics.median(times), times[int(len(times) * 0.99)], matched


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--runbooks", type=int, default=200)
    ap.add_argument("--label-length", type=int, default=4096, help="characters of the long label")
    args = ap.parse_args()
    rng = random.Random(7)
    batch = alerts(args.alerts, args.runbooks, args.label_length, rng)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "plain"
        base.mkdir()
        for i in range(args.runbooks):
            (base / f"svc-{i}.yaml").write_text(RUNBOOK.format(i=i))
        rate, p50, p99, matched = measure(base, batch)
        print(f"{args.runbooks} runbooks, {args.alerts} alerts: {rate:,.0f} alerts/s, p50 {p50 * 1e6:.0f} us, "
              f"p99 {p99 * 1e6:.0f} us CPU per alert ({matched} runs would start)")  # fmt: skip
        (base / "pathological.yaml").write_text(PATHOLOGICAL)
        rate2, p50b, p99b, matched2 = measure(base, batch)
        print(f"+ `(a+)+$` against {args.label_length}-character labels: {rate2:,.0f} alerts/s, "
              f"p50 {p50b * 1e6:.0f} us, p99 {p99b * 1e6:.0f} us CPU per alert ({matched2} runs would start)")  # fmt: skip
    ratio = p99b / p99
    print(f"p99 ratio {ratio:.2f}x (budget 2x)")
    return 0 if ratio <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
