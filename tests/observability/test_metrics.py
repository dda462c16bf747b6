"""/metrics after a whole cycle follows Prometheus conventions (promtool check metrics is clean) and has
the families an operator needs: build info, process, steps, approvals, in-doubt, outbox, Slack, Vault."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .cycle import CANARY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAMILIES = (
    "runbot_build_info", "process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
    "python_gc_collections_total", "runbot_step_duration_seconds_bucket", "runbot_step_outcomes_total",
    "runbot_approval_wait_seconds_bucket", "runbot_approvals_pending", "runbot_approval_oldest_pending_seconds",
    "runbot_approvals_unnotified", "runbot_steps_in_doubt", "runbot_step_in_doubt_oldest_seconds",
    "runbot_outbox_backlog", "runbot_outbox_oldest_seconds", "runbot_worker_up", "runbot_intake_lag_seconds",
)  # fmt: skip


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_metrics_after_a_cycle_pass_promtool(observed):
    out = subprocess.run(["promtool", "check", "metrics"], input=observed.metrics, capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_the_families_are_there_and_no_created_series(observed):
    text = observed.metrics
    for family in FAMILIES:
        assert any(line.startswith(family) for line in text.splitlines()), family
    for op in ("login", "lease_renew", "lease_revoke"):  # zero, not absent, before the first failure
        assert f'runbot_vault_failures_total{{operation="{op}"}} 0.0' in text
    # the cycle met one 429 from Slack (and delivered anyway)
    assert 'runbot_slack_rate_limited_total{method="chat.postMessage"} 1.0' in text
    assert 'runbot_slack_api_errors_total{error="ratelimited",method="chat.postMessage"} 1.0' in text
    assert not [line for line in text.splitlines() if line.split("{")[0].split(" ")[0].endswith("_created")]
    assert CANARY not in text
    assert 'runbot_step_outcomes_total{outcome="succeeded",runbook="cycle",type="http.request"} 2.0' in text
    assert 'runbot_approval_wait_seconds_count{decision="approved",runbook="cycle"} 1.0' in text
    assert 'runbot_worker_up{worker="slack-outbox"} 1.0' in text
