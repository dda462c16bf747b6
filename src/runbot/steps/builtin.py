"""Control steps every runbot has: noop, log, wait (durable sleep), fail (for tests and drills)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import Field

from runbot.domain import StepKind
from runbot.durations import Duration
from runbot.steps.base import Params, Step, StepContext, StepError, StepResult, Suspend


class NoopParams(Params):
    pass


class Noop(Step[NoopParams]):
    type = "noop"
    kind = StepKind.CONTROL
    Params = NoopParams
    doc = "Does nothing; useful as a placeholder and for benchmarks."

    async def run(self, params: NoopParams, ctx: StepContext) -> StepResult:
        return StepResult(output={}, summary="ok")


class LogParams(Params):
    message: str
    level: Literal["debug", "info", "warning", "error"] = "info"


class Log(Step[LogParams]):
    type = "log"
    kind = StepKind.CONTROL
    Params = LogParams
    doc = "Records a message in the run, the audit trail and the process log."

    async def run(self, params: LogParams, ctx: StepContext) -> StepResult:
        getattr(ctx.log, params.level)(params.message)
        text = ctx.redactor.redact(params.message)
        return StepResult(output={"message": text, "level": params.level}, summary=text[:200])


class WaitParams(Params):
    duration: Duration = Field(description="how long to sleep, e.g. 5m; survives restarts")


class Wait(Step[WaitParams]):
    type = "wait"
    kind = StepKind.CONTROL
    Params = WaitParams
    doc = "Durable sleep: the run is parked with a persisted timer and resumes after a restart."

    async def run(self, params: WaitParams, ctx: StepContext) -> StepResult | Suspend:
        now = datetime.now(UTC)
        if ctx.resume_state is None:
            until = now + timedelta(seconds=params.duration)
            return Suspend(until=until, state={"until": until.isoformat()}, reason=f"waiting {params.duration:g}s")
        until = datetime.fromisoformat(ctx.resume_state["until"])
        if now < until:
            return Suspend(until=until, state=ctx.resume_state, reason="waiting")
        return StepResult(output={"waited_until": until.isoformat()}, summary="done waiting")


class FailParams(Params):
    message: str = "failed on purpose"
    times: int | None = Field(default=None, ge=1, description="fail only the first N attempts, then succeed")
    retryable: bool = True


class Fail(Step[FailParams]):
    type = "fail"
    kind = StepKind.CONTROL
    Params = FailParams
    doc = "Fails (optionally only the first N attempts): for drills and tests of retry and on_failure."

    async def run(self, params: FailParams, ctx: StepContext) -> StepResult:
        if params.times is None or ctx.attempt <= params.times:
            raise StepError(params.message, retryable=params.retryable)
        return StepResult(output={"attempt": ctx.attempt}, summary=f"succeeded on attempt {ctx.attempt}")
