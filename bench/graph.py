"""Measure PNG rendering for prometheus.graph: 20 series x 360 points (the 1 s budget in the issue).

Run: .venv/bin/python bench/graph.py [--series 20] [--points 360] [--repeat 10]
Prints the import time, the first (cold) render and warm render statistics; exits 1 if the warm
median exceeds the budget.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--points", type=int, default=360)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per warm render")
    ap.add_argument("--out", default="", help="write the last PNG here to look at it")
    args = ap.parse_args()

    t0 = time.perf_counter()
    from runbot.graphs import Line, render_line_chart

    import_s = time.perf_counter() - t0

    rng = random.Random(42)
    end = time.time()
    step = 10.0
    start = end - step * (args.points - 1)
    times = [start + i * step for i in range(args.points)]
    lines = []
    for s in range(args.series):
        base = rng.uniform(5, 500)
        vals = [base * (1 + 0.3 * math.sin(i / 25 + s)) + rng.uniform(-5, 5) for i in range(args.points)]
        lines.append(Line(f'{{code="{200 + s}", handler="/api/v1/items/{s}"}}', times, vals))
    marker = start + (end - start) * 0.7

    def once() -> tuple[float, bytes]:
        t = time.perf_counter()
        png = render_line_chart(lines, title="sum by (code, handler) (rate(http_requests_total[1m]))",
                                unit="req/s", subtitle="default · last 1h · step 10s", start=start, end=end,
                                marker=marker)  # fmt: skip
        return time.perf_counter() - t, png

    cold, png = once()
    warm = []
    for _ in range(args.repeat):
        dt, png = once()
        warm.append(dt)
    if args.out:
        with open(args.out, "wb") as fh:
            fh.write(png)
    med = statistics.median(warm)
    print(f"graph bench: {args.series} series x {args.points} points, {len(png)} bytes PNG")
    print(f"  import runbot.graphs (matplotlib): {import_s * 1000:.0f} ms")
    print(f"  first render (cold):               {cold * 1000:.0f} ms")
    print(f"  warm renders x{args.repeat}: median {med * 1000:.0f} ms, max {max(warm) * 1000:.0f} ms, "
          f"min {min(warm) * 1000:.0f} ms (budget {args.budget * 1000:.0f} ms)")  # fmt: skip
    return 0 if med <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
