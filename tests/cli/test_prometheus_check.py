"""`runbot prometheus check` against a real Prometheus with TLS and basic auth: ok, or why not, never a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.prometheus import BasicAuthUser, prometheus_available, running_prometheus, self_signed_cert

RUNBOT = str(Path(sys.executable).with_name("runbot"))
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory):
    if not prometheus_available():
        pytest.skip("prometheus binary not installed")
    d = tmp_path_factory.mktemp("secure-prom")
    cert, key = self_signed_cert(d / "tls")
    with running_prometheus(d, samples=1, tls_cert=cert, tls_key=key, basic_auth=BasicAuthUser("runbot", PASSWORD)) as p:
        yield p, cert


def check(tmp_path: Path, servers: dict, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}, "RUNBOT_CONFIG": "none"}
    env.update(RUNBOT_DATA_DIR=str(tmp_path / "data"), RUNBOT_RUNBOOKS_DIR=str(tmp_path),
               RUNBOT_PROMETHEUS_SERVERS=json.dumps(servers))  # fmt: skip
    out = subprocess.run([RUNBOT, "prometheus", "check", *args], env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.mark.integration
def test_a_reachable_server_with_the_right_credentials_is_ok(secure, tmp_path):
    prom, cert = secure
    out = check(tmp_path, {"eu": {"url": prom.url, "username": "runbot", "password": PASSWORD, "ca_file": str(cert)}})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"ok      eu {prom.url}: 1 target(s) in `up`, 0 down")


@pytest.mark.integration
def test_each_failure_is_named_and_no_secret_is_printed(secure, tmp_path):
    prom, cert = secure
    out = check(tmp_path, {
        "wrongpw": {"url": prom.url, "username": "runbot", "password": "not-the-password-9f8e", "ca_file": str(cert)},
        "notls": {"url": prom.url, "username": "runbot", "password": PASSWORD},
        "down": {"url": "http://127.0.0.1:9", "username": "runbot", "password": PASSWORD},
    })
    assert out.returncode == 1
    lines = {line.split()[1]: line for line in out.stdout.splitlines()}
    assert "authentication refused" in lines["wrongpw"]
    assert "TLS verification failed" in lines["notls"]
    assert "connection refused" in lines["down"]
    assert "3 of 3 Prometheus server(s) failed" in out.stderr
    assert PASSWORD not in out.stdout + out.stderr and "not-the-password-9f8e" not in out.stdout + out.stderr


def test_no_server_configured_is_one_line_and_a_hint(tmp_path):
    out = check(tmp_path, {})
    assert out.returncode == 1
    assert "no Prometheus server is configured" in out.stderr and "RUNBOT_PROMETHEUS_URL" in out.stderr
