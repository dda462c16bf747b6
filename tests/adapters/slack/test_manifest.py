"""The checked-in Slack app manifest is exactly what the code needs, and the CLI prints it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from runbot.adapters.slack.manifest import BOT_EVENTS, BOT_SCOPES, manifest

ROOT = Path(__file__).resolve().parents[3]


def test_deploy_manifest_matches_the_code() -> None:
    shipped = yaml.safe_load((ROOT / "deploy/slack/manifest.yaml").read_text())
    assert shipped == manifest()
    assert shipped["oauth_config"]["scopes"]["bot"] == list(BOT_SCOPES)
    assert shipped["settings"]["event_subscriptions"]["bot_events"] == BOT_EVENTS
    assert shipped["settings"]["socket_mode_enabled"] is True and shipped["settings"]["interactivity"]["is_enabled"]
    assert shipped["features"]["slash_commands"][0]["command"] == "/runbot"
    assert shipped["features"]["app_home"]["home_tab_enabled"] is True


def test_http_mode_manifest_points_every_request_url_at_one_endpoint() -> None:
    url = "https://runbot.example.com/slack/events"
    m = manifest(request_url=url, command="/ops")
    assert m["settings"]["socket_mode_enabled"] is False
    assert m["settings"]["interactivity"]["request_url"] == url
    assert m["settings"]["event_subscriptions"]["request_url"] == url
    assert m["features"]["slash_commands"][0] == {**m["features"]["slash_commands"][0], "command": "/ops", "url": url}


def test_cli_prints_the_manifest(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "runbot.cli.main", "slack", "manifest", "--url", "https://x/slack/events"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60, check=True)  # fmt: skip
    assert yaml.safe_load(out.stdout) == manifest(request_url="https://x/slack/events")
