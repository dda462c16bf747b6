"""Alertmanager intake: webhook, dedupe, incidents, matching, storms, silences, API, crash recovery."""
