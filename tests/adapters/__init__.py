"""Tests for the adapters (Alertmanager, Slack, ...)."""
