"""Slack delivery metrics, on the app's registry (one set per registry: tests build several apps)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

_lock = threading.Lock()
_by_registry: dict[int, SlackMetrics] = {}


@dataclass
class SlackMetrics:
    refused: Counter  # alert on any increase: a message Slack would not take (an approval request included)
    approval_delay: Histogram  # approval requested -> its message accepted by Slack


def slack_metrics(registry: CollectorRegistry) -> SlackMetrics:
    with _lock:
        found = _by_registry.get(id(registry))
        if found is None:
            found = _by_registry[id(registry)] = SlackMetrics(
                Counter("runbot_slack_refused", "Messages Slack refused for good (by kind)", ["kind"], registry=registry),
                Histogram("runbot_slack_approval_delay_seconds", "From an approval request to its Slack message",
                          registry=registry, buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)),
            )  # fmt: skip
        return found
