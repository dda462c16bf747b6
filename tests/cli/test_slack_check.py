"""`runbot slack check` proves both credentials against Slack's wire (the fake), never showing them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.fake_slack import APP_TOKEN, BOT_TOKEN, FakeSlack

RUNBOT = str(Path(sys.executable).with_name("runbot"))


def check(tmp_path: Path, fake: FakeSlack, **tokens: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(RUNBOT_CONFIG="none", RUNBOT_DATA_DIR=str(tmp_path / "data"), RUNBOT_SLACK_API_URL=fake.api_url,
               RUNBOT_SLACK_BOT_TOKEN=tokens.get("bot", BOT_TOKEN), RUNBOT_SLACK_APP_TOKEN=tokens.get("app", APP_TOKEN))  # fmt: skip
    out = subprocess.run([RUNBOT, "slack", "check"], env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_socket_mode_checks_the_app_level_token_too(tmp_path):
    with FakeSlack() as fake:
        good = check(tmp_path, fake)
        assert good.returncode == 0, good.stderr
        assert "app-level token accepted" in good.stdout
        assert any(c.method == "apps.connections.open" for c in fake.calls)

        bad = check(tmp_path, fake, app="xapp-1-not-the-right-one")
    assert bad.returncode == 1
    assert "the app-level token was refused (apps.connections.open: Slack refused: invalid_auth)" in bad.stderr
    assert "xapp-1-not-the-right-one" not in bad.stdout + bad.stderr
