"""What the engine needs from the outside, as small protocols; adapters implement them."""

from __future__ import annotations

from typing import Any, Protocol


class SecretError(Exception):
    """A secret could not be fetched. The message names the reference and the reason, never a value."""

    def __init__(self, ref: str, reason: str, *, retryable: bool = False) -> None:
        super().__init__(f"secret {ref!r}: {reason}")
        self.ref = ref
        self.reason = reason
        self.retryable = retryable


class SecretProvider(Protocol):
    """Resolves `path#key` references. Sync: called from a worker thread at the moment of use."""

    def fetch(self, ref: str) -> str: ...


class Notifier(Protocol):
    """Delivers outbox events (Slack, ...). Called after commit; must be safe to repeat."""

    def deliver(self, topic: str, payload: dict[str, Any]) -> None: ...
