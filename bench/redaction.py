"""Redaction benchmark: messages/s with 10,000 registered secrets, before (regex per run) and after (one automaton).

    .venv/bin/python bench/redaction.py                   # 10,000 secrets over 1,000 runs, 20,000 messages
    .venv/bin/python bench/redaction.py --secrets 1000 --runs 100

"Before" is the previous design, kept here as the reference: each run's redactor compiled one regex
alternation of its secrets' forms and the process-wide registry (every log line) looped over all live
runs' redactors. "After" is runbot.redaction: one Aho-Corasick matcher over every form, plus the base64
cores, hex and percent windows the old design did not look for at all. Three figures each: a single
redactor holding every secret, the process-wide registry over all runs, and the cost of registering.
Messages are log-like lines (~200 characters); 1 in 10 holds a secret, some of those inside a larger
base64 or percent-encoded string.
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import string
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable

from runbot.redaction import MASK, Redactor, RedactorRegistry, encodings


class OldRedactor:
    """The previous design, verbatim in substance: one regex alternation, recompiled on every register."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for v in values:
            self.register(v)

    def register(self, value: str, *, compile_now: bool = True) -> None:
        with self._lock:
            new = encodings(value) - self._forms
            if not new:
                return
            self._forms |= new
            if compile_now:
                self.compile()

    def compile(self) -> None:
        ordered = sorted(self._forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None and text else text


class OldRegistry:
    def __init__(self) -> None:
        self.by_run: dict[str, OldRedactor] = {}

    def redact(self, text: str) -> str:
        for r in list(self.by_run.values()):
            text = r.redact(text)
        return text


def secrets(n: int, rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits + "-_+/="
    return [f"s{i}-" + "".join(rng.choice(alphabet) for _ in range(rng.randint(16, 40))) for i in range(n)]


def messages(n: int, values: list[str], rng: random.Random) -> list[str]:
    words = ["step", "restart", "nginx", "returned", "status", "ok", "upstream", "latency", "p99", "seconds", "instance", "pod", "node"]
    out = []
    for i in range(n):
        line = " ".join(rng.choice(words) for _ in range(28))[:190]
        if i % 10 == 0:
            v = rng.choice(values)
            line += rng.choice([f" token={v}", " Basic " + base64.b64encode(f"ops:{v}".encode()).decode(),
                                " url=/x?k=" + urllib.parse.quote(f"a&{v}", safe="")])  # fmt: skip
        out.append(line)
    return out


def rate(fn: Callable[[str], str], msgs: list[str], budget: float) -> float:
    done, t0 = 0, time.perf_counter()
    while True:
        for m in msgs:
            fn(m)
            done += 1
            if done % 200 == 0 and time.perf_counter() - t0 > budget:
                return done / (time.perf_counter() - t0)
        if time.perf_counter() - t0 > budget:
            return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secrets", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=1_000)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--budget", type=float, default=5.0, help="seconds per measurement")
    args = ap.parse_args()
    rng = random.Random(7)
    values = secrets(args.secrets, rng)
    msgs = messages(args.messages, values, rng)

    t0 = time.perf_counter()
    old_one = OldRedactor()
    for v in values:
        old_one.register(v, compile_now=False)  # compiling after each register would take hours at 10k
    old_one.compile()
    t_old_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    new_one = Redactor(values)
    new_one.redact("warm up: builds the automaton")
    t_new_build = time.perf_counter() - t0

    per_run = args.secrets // args.runs
    old_reg, new_reg = OldRegistry(), RedactorRegistry()
    for r in range(args.runs):
        chunk = values[r * per_run : (r + 1) * per_run]
        old_reg.by_run[f"run{r}"] = OldRedactor(chunk)
    t0 = time.perf_counter()
    for r in range(args.runs):
        red = new_reg.for_run(f"run{r}")
        for v in values[r * per_run : (r + 1) * per_run]:
            red.register(v)
            new_reg.redact("a log line between registrations")  # worst case: every register is seen at once
    t_new_reg = (time.perf_counter() - t0) / args.secrets

    leaks = sum(1 for m in msgs[::10] if new_one.redact(m) == m)
    print(f"{args.secrets} secrets ({new_one.words} matcher words), {args.runs} runs, {len(msgs)} messages")
    print(f"build one redactor: before {t_old_build:.2f}s  after {t_new_build:.2f}s")
    print(f"register into the registry (with a redact after each): after {t_new_reg * 1e3:.3f} ms/secret")
    budget = args.budget
    print(f"one redactor, all secrets:  before {rate(old_one.redact, msgs, budget):9.0f} msg/s   "
          f"after {rate(new_one.redact, msgs, budget):9.0f} msg/s")  # fmt: skip
    print(f"registry over {args.runs} runs:  before {rate(old_reg.redact, msgs, budget):9.0f} msg/s   "
          f"after {rate(new_reg.redact, msgs, budget):9.0f} msg/s")  # fmt: skip
    print(f"messages with a secret left unmasked (after): {leaks} of {len(msgs[::10])}")


if __name__ == "__main__":
    main()
