"""Rehearsals: run a runbook on the real engine against recorded responses, and check what happens.

`runbot test` is the command; this package is what it uses (and what tests use directly):

    from runbot.rehearsal import load_rehearsal, rehearse, render
    result = rehearse(load_rehearsal(Path("runbooks/rehearsals/x.rehearsal.yaml")), settings)
    print("\n".join(render(result)))
    assert result.passed, result.problems
"""

from runbot.rehearsal.driver import DriveResult, advance_clock, drive_run
from runbot.rehearsal.report import Line, Result, render
from runbot.rehearsal.session import rehearsal_settings, rehearse
from runbot.rehearsal.spec import (
    Rehearsal,
    RehearsalFileError,
    find_rehearsals,
    is_rehearsal_file,
    load_rehearsal,
    parse_rehearsal,
)

__all__ = [
    "DriveResult",
    "Line",
    "Rehearsal",
    "RehearsalFileError",
    "Result",
    "advance_clock",
    "drive_run",
    "find_rehearsals",
    "is_rehearsal_file",
    "load_rehearsal",
    "parse_rehearsal",
    "rehearsal_settings",
    "rehearse",
    "render",
]
