"""How fast the `runbot` command answers, against issue 18's targets (SQLite with 10,000 runs).

    .venv/bin/python bench/cli.py [--runs 10000] [--repeat 5]

Each command runs --repeat times as a fresh process (as a person or a script runs it); the figures are
min / median / max wall seconds, next to the target. `serve` is timed from process start to /readyz 200 on an
empty database, and its idle RSS is read from /proc after it is ready.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNBOT = str(Path(sys.executable).with_name("runbot"))
RUNBOOK = """
name: bench
steps:
  - {id: one, type: log, with: {message: "hello"}}
"""


def fill(data: Path, runbooks: Path, n: int) -> str:
    """A database with n runs, made through the engine's own create_run (one transaction each)."""
    from runbot.app import build_runtime
    from runbot.settings import Settings

    rt = build_runtime(Settings(data_dir=data, runbooks_dir=runbooks))
    book = rt.catalog.get("bench")
    assert book is not None, rt.catalog.problems
    run_id = ""
    for _ in range(n):
        run_id = rt.engine.create_run(book, manual=True, requester="cli:bench")
    rt.close()
    return run_id


def timed(env: dict[str, str], args: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run([RUNBOT, *args], env=env, capture_output=True, text=True, cwd=ROOT)
        out.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"runbot {' '.join(args)} failed: {proc.stderr.strip()}")
    return out


def serve_ready(env: dict[str, str], data: Path) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([RUNBOT, "serve", "--port", str(port)], env={**env, "RUNBOT_DATA_DIR": str(data)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() - started > 60:
                raise SystemExit("serve did not become ready")
            time.sleep(0.02)
        ready = time.perf_counter() - started
        rss = 0.0
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        return ready, rss
    finally:
        proc.terminate()
        proc.wait(10)


def show(name: str, values: list[float], target: float) -> None:
    lo, med, hi = min(values), statistics.median(values), max(values)
    verdict = "met" if med < target else "NOT met"
    print(f"{name:<34} {lo:6.3f} / {med:6.3f} / {hi:6.3f} s   target < {target:g} s (median): {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, runbooks = Path(tmp) / "data", Path(tmp) / "runbooks"
        runbooks.mkdir()
        (runbooks / "bench.yaml").write_text(RUNBOOK)
        t0 = time.perf_counter()
        run_id = fill(data, runbooks, args.runs)
        print(f"database: {args.runs:,} runs in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
        env.update(RUNBOT_CONFIG="none", RUNBOT_DATA_DIR=str(data), RUNBOT_RUNBOOKS_DIR=str(runbooks))
        print(f"{'command':<34} {'min / median / max':>26}")
        show("runbot --help", timed(env, ["--help"], args.repeat), 0.25)
        show("runbot --version", timed(env, ["--version"], args.repeat), 0.25)
        show("runbot runs list", timed(env, ["runs", "list"], args.repeat), 0.4)
        show("runbot runs show", timed(env, ["runs", "show", run_id], args.repeat), 0.4)
        project = {k: v for k, v in env.items() if k not in ("RUNBOT_CONFIG", "RUNBOT_RUNBOOKS_DIR")}
        project["RUNBOT_CONFIG"] = str(ROOT / "deploy/runbot/runbot.example.yaml")
        project["RUNBOT_RUNBOOKS_DIR"] = str(ROOT / "runbooks")
        show("runbot lint (shipped runbooks)", timed(project, ["lint"], args.repeat), 1.0)
        readies, rsses = [], []
        for i in range(args.repeat):
            ready, rss = serve_ready(env, Path(tmp) / f"empty-{i}")
            readies.append(ready)
            rsses.append(rss)
        show("runbot serve: /readyz 200", readies, 3.0)
        print(f"{'runbot serve: idle RSS':<34} {min(rsses):6.0f} / {statistics.median(rsses):6.0f} / {max(rsses):6.0f} MB")
        print(json.dumps({"load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
