"""Which channel a run's thread goes to, and the name of a dedicated incident channel."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runbot.adapters.slack.runview import RunView
from runbot.settings import Settings

_SLUG = re.compile(r"[^a-z0-9_-]+")


def channel_for(settings: Settings, view: RunView) -> str | None:
    """Runbook `slack.channel`, then its `slack.channel_from_label`, then the label map, then the default.

    A label value only selects among channels named in configuration: an alert cannot direct the bot to
    an arbitrary channel.
    """
    spec = view.book.spec.slack if view.book is not None else None
    labels = view.labels
    if spec is not None and spec.channel:
        return spec.channel
    if spec is not None and spec.channel_from_label:
        mapped = _lookup(settings.slack_label_channels, spec.channel_from_label, labels)
        if mapped:
            return mapped
    for label in settings.slack_label_channels:
        mapped = _lookup(settings.slack_label_channels, label, labels)
        if mapped:
            return mapped
    return settings.slack_default_channel


def _lookup(table: dict[str, dict[str, str]], label: str, labels: dict[str, Any]) -> str | None:
    value = labels.get(label)
    if value is None:
        return None
    return table.get(label, {}).get(str(value))


def runbook_url(settings: Settings, view: RunView) -> str | None:
    """RUNBOT_SLACK_RUNBOOK_URL with {path} (relative to the runbooks directory), {file} and {name} filled in."""
    template = settings.slack_runbook_url
    if not template or view.book is None:
        return None
    path = Path(view.book.path)
    try:
        rel = path.resolve().relative_to(settings.runbooks_dir.resolve()).as_posix()
    except (ValueError, OSError):
        rel = path.name
    try:
        return template.format(path=rel, file=path.name, name=view.book.name)
    except (KeyError, IndexError, ValueError):
        return None


def incident_channel_name(settings: Settings, view: RunView) -> str:
    """`inc-20261122-api-high-error-rate-r1a2b3`: lowercase, at most 80 characters, as Slack requires."""
    created = view.run["created_at"]
    base = str(view.labels.get("alertname") or view.run["runbook_name"]).lower()
    slug = _SLUG.sub("-", base).strip("-")[:40] or "incident"
    ref = (view.incident or {}).get("id") or view.id
    short = _SLUG.sub("", str(ref).lower())[-6:]
    prefix = _SLUG.sub("-", settings.slack_incident_channel_prefix.lower()).strip("-") or "inc"
    return f"{prefix}-{created:%Y%m%d}-{slug}-{short}"[:80]
