"""Adapters: the outside world (Alertmanager, Slack, timers) turned into engine commands and back."""
