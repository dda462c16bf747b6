"""States, kinds and the run state machine as data; no I/O here."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"  # created, not yet admitted (concurrency queue)
    RUNNING = "running"
    WAITING = "waiting"  # timer, approval or a human decision on an in-doubt step
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"  # a human chose abort on an in-doubt step
    SKIPPED = "skipped"  # refused by concurrency or cooldown; kept so nothing is silently dropped

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN


TERMINAL_RUN = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.ABORTED, RunStatus.SKIPPED}
)
LIVE_RUN = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING})

RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.SKIPPED}),
    RunStatus.RUNNING: frozenset(
        {RunStatus.RUNNING, RunStatus.WAITING, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.WAITING: frozenset(
        {RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.ABORTED}
    ),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
    RunStatus.ABORTED: frozenset(),
    RunStatus.SKIPPED: frozenset(),
}


class StepStatus(StrEnum):
    RUNNING = "running"  # claimed and committed before the side effect
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # this attempt failed; retry_at says whether another comes
    SKIPPED = "skipped"  # `when` was false, or a human chose skip
    WAITING = "waiting"  # suspended: durable sleep, approval, silence hold
    IN_DOUBT = "in_doubt"  # was running when its process died and is not idempotent
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.CANCELLED)


STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.RUNNING: frozenset(
        {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.WAITING, StepStatus.IN_DOUBT, StepStatus.CANCELLED}
    ),
    StepStatus.WAITING: frozenset(
        {StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
    ),
    StepStatus.IN_DOUBT: frozenset({StepStatus.SKIPPED, StepStatus.FAILED, StepStatus.CANCELLED}),
    StepStatus.FAILED: frozenset(),
    StepStatus.SUCCEEDED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
    StepStatus.CANCELLED: frozenset(),
}


class StepKind(StrEnum):
    DIAGNOSTIC = "diagnostic"  # read-only, idempotent, retryable
    REMEDIATION = "remediation"  # changes things: approval, idempotency key, verification
    CONTROL = "control"  # approval, wait, message


class Decision(StrEnum):
    RETRY = "retry"
    SKIP = "skip"
    ABORT = "abort"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class InvalidTransition(RuntimeError):
    pass


def check_run_transition(old: RunStatus, new: RunStatus) -> None:
    if new not in RUN_TRANSITIONS[old]:
        raise InvalidTransition(f"run cannot go from {old} to {new}")


def check_step_transition(old: StepStatus, new: StepStatus) -> None:
    if new not in STEP_TRANSITIONS[old]:
        raise InvalidTransition(f"step cannot go from {old} to {new}")
