"""The step registry a rehearsal runs with: the real plugins, made incapable of reaching the outside.

- prometheus.*, http.request, command: the real plugins; they answer from `ctx.rehearsal` (the recording).
  http.request also gets an outbound policy that allows every host and never resolves DNS, because no
  request leaves the process (lint your runbooks with your real configuration for the policy checks).
- noop, log, fail: pure; they run as they are.
- wait: skipped (the rehearsal's clock does not stand still for it).
- every other type (vault.credentials, third-party plugins): its params are still validated, but `run` is
  replaced by the recorded `{output, summary}` or `{error, retryable}`; unrecorded, the step fails.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from runbot.netpolicy import IPAddress, NetPolicy, ip_literal
from runbot.steps.base import Step, StepContext, StepError, StepResult
from runbot.steps.registry import StepRegistry

RECORDED_TYPES = frozenset({"prometheus.query", "prometheus.range", "prometheus.graph", "http.request", "command"})
PURE_TYPES = frozenset({"noop", "log", "fail"})
SKIPPED_TYPES = frozenset({"wait"})
_NOWHERE = ipaddress.ip_address("192.0.2.1")  # TEST-NET-1: a pinned address nothing is ever sent to


class NoNetworkPolicy(NetPolicy):
    """Allows any http(s) host and resolves nothing: requests go to the recording, not to an address."""

    def __init__(self) -> None:
        super().__init__(["*"])

    async def resolve(self, host: str, port: int, *, timeout: float | None = None) -> list[IPAddress]:
        literal = ip_literal(host)
        return [literal if literal is not None else _NOWHERE]


async def _recorded_run(self: Step[Any], params: Any, ctx: StepContext) -> StepResult:
    rec = ctx.rehearsal
    if rec is None:
        raise StepError(f"{self.type} cannot run in a rehearsal without a recording", retryable=False)
    rec.log_call({"kind": "recorded", "type": self.type})
    entry = rec.next_entry()
    if "error" in entry:
        raise StepError(str(entry["error"]), retryable=bool(entry.get("retryable", False)))
    output = entry.get("output") or {}
    if not isinstance(output, dict):
        raise StepError(f"rehearsal: responses.{ctx.step_id}.output must be a mapping", retryable=False)
    return StepResult(output=output, summary=str(entry.get("summary", f"recorded {self.type} output")))


async def _skipped_wait(self: Step[Any], params: Any, ctx: StepContext) -> StepResult:
    seconds = float(getattr(params, "duration", 0.0))
    return StepResult(output={"waited": seconds, "rehearsal": "skipped"}, summary=f"wait of {seconds:g}s skipped")


class RehearsalRegistry(StepRegistry):
    """Same names and params models as the live registry; only how steps reach the world differs."""

    def get(self, name: str) -> Step[Any]:
        inst = self._instances.get(name)
        if inst is None:
            real = self.cls(name)
            if name in RECORDED_TYPES or name in PURE_TYPES:
                inst = real(self.settings)
            else:
                run = _skipped_wait if name in SKIPPED_TYPES else _recorded_run
                inst = type(f"Rehearsed{real.__name__}", (real,), {"run": run})(self.settings)
            if hasattr(inst, "policy") and isinstance(inst.policy, NetPolicy):
                inst.policy = NoNetworkPolicy()
            self._instances[name] = inst
        return inst
