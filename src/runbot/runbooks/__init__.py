"""Runbook-as-code: typed model, YAML loader with line numbers, matchers and sandboxed templating."""
