"""Trace and span ids derived from run ids, so one run is one trace across process restarts.

A run may be started by one replica, parked for an approval, resumed by another after a restart: no
process holds its span in memory the whole time. Deriving the trace id (and the run span's id) from the
run id makes every process, and every log line naming the run, agree on the trace without storing it.
"""

from __future__ import annotations

import hashlib


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(("runbot", *parts)).encode()).digest()


def run_trace_id(run_id: str) -> int:
    """128-bit W3C trace id of the run (never zero)."""
    return int.from_bytes(_digest("trace", run_id)[:16], "big") or 1


def run_span_id(run_id: str) -> int:
    """64-bit span id of the run's root span."""
    return int.from_bytes(_digest("run-span", run_id)[:8], "big") or 1


def step_span_id(run_id: str, step_id: str, attempt: int) -> int:
    """64-bit span id of one step attempt (the same in every process that records it)."""
    return int.from_bytes(_digest("step-span", run_id, step_id, str(attempt))[:8], "big") or 1


def trace_hex(run_id: str) -> str:
    return f"{run_trace_id(run_id):032x}"
