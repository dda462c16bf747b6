"""runbot: incident-response runbook automation."""

__version__ = "0.1.0"
