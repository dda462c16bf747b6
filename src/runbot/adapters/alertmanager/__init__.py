"""Alertmanager intake: the webhook, dedupe and incidents, matching runs, storm limits, silences, inspection API."""

from runbot.adapters.alertmanager.wiring import install

__all__ = ["install"]
