"""Which runbooks an Alertmanager receiver may start (RUNBOT_ALERTMANAGER_RECEIVER_RUNBOOKS).

Receivers are tenants: their alerts and incidents are kept apart (unpack.py, incidents.py), and a receiver
can optionally be limited to the runbooks its team owns, so a `dev` Alertmanager that sends `alertname:
ApiDown` cannot start prod's remediation. Patterns are shell-style globs on runbook names (`api-*`); a
receiver not listed may start every runbook, unless a `"*"` entry gives the default for unlisted ones.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

DEFAULT = "*"
SETTING = "RUNBOT_ALERTMANAGER_RECEIVER_RUNBOOKS"


class RunbookScope:
    def __init__(self, allowed: dict[str, list[str]]) -> None:
        self.allowed = {k: tuple(v) for k, v in allowed.items()}
        self._memo: dict[tuple[str, str], bool] = {}

    def patterns(self, receiver: str) -> tuple[str, ...] | None:
        """The globs that bind this receiver, or None when it may start every runbook."""
        found = self.allowed.get(receiver)
        return found if found is not None else self.allowed.get(DEFAULT)

    def may_start(self, receiver: str, runbook: str) -> bool:
        key = (receiver, runbook)
        out = self._memo.get(key)
        if out is None:
            pats = self.patterns(receiver)
            out = pats is None or any(fnmatchcase(runbook, p) for p in pats)
            if len(self._memo) < 100_000:
                self._memo[key] = out
        return out

    def refusal(self, receiver: str, runbook: str) -> str:
        pats = self.patterns(receiver) or ()
        allowed = ", ".join(pats) if pats else "none"
        return (f"receiver {receiver!r} may not start runbook {runbook!r} (allowed for it: {allowed}; {SETTING})")
