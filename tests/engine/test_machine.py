"""The run and step state machines are data; these tests pin every allowed and refused transition."""

import itertools

import pytest

from runbot.domain import (
    LIVE_RUN,
    RUN_TRANSITIONS,
    STEP_TRANSITIONS,
    TERMINAL_RUN,
    InvalidTransition,
    RunStatus,
    StepStatus,
    check_run_transition,
    check_step_transition,
)


def test_every_run_status_has_a_row_and_live_and_terminal_partition_them():
    assert set(RUN_TRANSITIONS) == set(RunStatus)
    assert set(RunStatus) == LIVE_RUN | TERMINAL_RUN
    assert not LIVE_RUN & TERMINAL_RUN


@pytest.mark.parametrize("old,new", list(itertools.product(RunStatus, RunStatus)))
def test_run_transition_table_is_enforced(old, new):
    if new in RUN_TRANSITIONS[old]:
        check_run_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_run_transition(old, new)


def test_terminal_runs_never_move():
    for status in TERMINAL_RUN:
        assert RUN_TRANSITIONS[status] == frozenset()
        assert status.terminal


@pytest.mark.parametrize("old,new", list(itertools.product(StepStatus, StepStatus)))
def test_step_transition_table_is_enforced(old, new):
    if new in STEP_TRANSITIONS[old]:
        check_step_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_step_transition(old, new)


def test_in_doubt_can_only_be_resolved_by_a_decision():
    assert STEP_TRANSITIONS[StepStatus.IN_DOUBT] == {StepStatus.SKIPPED, StepStatus.FAILED, StepStatus.CANCELLED}
