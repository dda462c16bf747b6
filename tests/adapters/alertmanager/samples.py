"""Alertmanager webhook payloads (version 4) as Alertmanager builds them, for tests and the benchmark."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

ZERO = "0001-01-01T00:00:00Z"
_seq = itertools.count(1)


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert(name: str = "HighDiskUsage", *, status: str = "firing", starts_at: datetime | None = None,
          ends_at: datetime | None = None, fingerprint: str | None = None, **labels: str) -> dict[str, Any]:  # fmt: skip
    """One alert; a fresh startsAt (a new alert instance) unless given."""
    start = starts_at or (datetime(2024, 5, 1, 10, 0, tzinfo=UTC) + timedelta(seconds=next(_seq)))
    all_labels = {"alertname": name, **labels}
    out: dict[str, Any] = {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": f"{name} on {labels.get('instance', 'somewhere')}"},
        "startsAt": ts(start),
        "endsAt": ts(ends_at) if ends_at else ZERO,
        "generatorURL": "http://prometheus.example/graph?g0.expr=up",
        "fingerprint": fingerprint or hashlib.sha256(json.dumps(all_labels, sort_keys=True).encode()).hexdigest()[:16],
    }
    return out


def resolved(a: dict[str, Any], ends_at: datetime | None = None) -> dict[str, Any]:
    """The same alert as Alertmanager reports it once resolved."""
    end = ends_at or datetime.fromisoformat(a["startsAt"].replace("Z", "+00:00")) + timedelta(minutes=5)
    return {**a, "status": "resolved", "endsAt": ts(end)}


def payload(*alerts: dict[str, Any], group: str | None = None, receiver: str = "runbot",
            status: str | None = None) -> dict[str, Any]:  # fmt: skip
    first = alerts[0]["labels"] if alerts else {}
    name = first.get("alertname", "x")
    return {
        "version": "4",
        "groupKey": group or f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
        "status": status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved"),
        "receiver": receiver,
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example",
        "alerts": list(alerts),
    }


LOG_RUNBOOK = """\
version: 1
name: {name}
match:
  - alertname = "{alertname}"
{extra}steps:
  - id: look
    type: log
    with:
      message: "looking at {{{{ alert.labels.instance }}}}"
"""


def runbook(name: str = "disk-usage", alertname: str = "HighDiskUsage", extra: str = "") -> str:
    return LOG_RUNBOOK.format(name=name, alertname=alertname, extra=extra)


APPROVAL_RUNBOOK = """\
version: 1
name: {name}
match:
  - alertname = "{alertname}"
on_resolve: {on_resolve}
steps:
  - id: look
    type: log
    with:
      message: "diagnosing"
  - id: fix
    type: log
    risk: high
    approval:
      approvers: {{slack_users: [U1]}}
      timeout: 1h
    with:
      message: "fixing"
"""


def approval_runbook(name: str, alertname: str, on_resolve: str = "cancel") -> str:
    return APPROVAL_RUNBOOK.format(name=name, alertname=alertname, on_resolve=on_resolve)
