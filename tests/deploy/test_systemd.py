"""deploy/systemd/runbot.service: hardened, accepted by `systemd-analyze verify`, and its offline
`systemd-analyze security` exposure stays low (the figure is reported in docs/deploy.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import ROOT

UNIT = ROOT / "deploy/systemd/runbot.service"
RUNBOT = str(Path(sys.executable).with_name("runbot"))


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an existing runbot (verify checks that the binary exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (scripts/setup.sh)")
    unit = tmp_path / "runbot.service"
    unit.write_text(UNIT.read_text().replace("/opt/runbot/bin/runbot", RUNBOT))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(installed):
    out = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


def test_the_security_exposure_is_at_most_the_documented_figure(installed):
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(installed)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for runbot.service: (\d+\.\d)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr
    documented = re.search(r"exposure level (\d+\.\d)", (ROOT / "docs/deploy.md").read_text())
    assert documented and float(m.group(1)) <= float(documented.group(1)), m.group(1)


def test_the_hardening_the_issue_asks_for():
    d = directives()
    for key, value in {"DynamicUser": "yes", "StateDirectory": "runbot", "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
                       "CapabilityBoundingSet": ""}.items():
        assert d[key] == [value], key
    assert d["SystemCallFilter"][0] == "@system-service" and d["SystemCallFilter"][1].startswith("~@privileged")
    assert "RUNBOT_DATA_DIR=/var/lib/runbot" in d["Environment"][0]
