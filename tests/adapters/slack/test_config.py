"""Configuration: Slack is off without a bot token; credentials may come from the secrets provider."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runbot.adapters.slack.config import SlackConfigError, credentials
from runbot.app import build_runtime, create_app
from runbot.secrets.local import FileSecretProvider
from runbot.settings import Settings


def provider(tmp_path: Path) -> FileSecretProvider:
    f = tmp_path / "secrets.yaml"
    f.write_text(yaml.safe_dump({"kv/slack": {"bot": "xoxb-from-vault", "signing": "sign-from-vault"}}))
    return FileSecretProvider(f)


def test_tokens_can_be_read_from_the_secrets_provider_and_never_print(tmp_path: Path) -> None:
    s = Settings(slack_bot_token="secret:kv/slack#bot", slack_signing_secret="secret:kv/slack#signing")
    creds = credentials(s, provider(tmp_path))
    assert creds.bot_token == "xoxb-from-vault" and creds.signing_secret == "sign-from-vault" and creds.mode == "http"
    assert "xoxb" not in repr(creds) and "vault" not in repr(creds)
    assert s.masked()["slack_bot_token"] == "****"


@pytest.mark.parametrize("settings, problem", [
    ({"slack_bot_token": "xoxb-1"}, "HTTP mode needs RUNBOT_SLACK_SIGNING_SECRET"),
    ({"slack_bot_token": "xoxb-1", "slack_mode": "socket"}, "Socket Mode needs RUNBOT_SLACK_APP_TOKEN"),
    ({"slack_bot_token": "secret:kv/slack#missing", "slack_signing_secret": "s"}, "no key 'missing'"),
])  # fmt: skip
def test_half_configured_slack_is_a_clear_error(tmp_path: Path, settings: dict, problem: str) -> None:
    with pytest.raises((SlackConfigError, Exception), match=problem):
        credentials(Settings(**settings), provider(tmp_path))


def test_an_app_token_selects_socket_mode(tmp_path: Path) -> None:
    creds = credentials(Settings(slack_bot_token="xoxb-1", slack_app_token="xapp-1"), provider(tmp_path))
    assert creds.mode == "socket" and creds.signing_secret is None


def test_without_a_bot_token_slack_stays_off(tmp_path: Path) -> None:
    rt = build_runtime(Settings(data_dir=tmp_path / "data", runbooks_dir=tmp_path / "books"))
    try:
        app = create_app(rt, run_engine=False)
        assert "/slack/events" not in {getattr(r, "path", None) for r in app.routes}
        assert rt.engine.outbox_enabled is False and not hasattr(app.state, "slack")
    finally:
        rt.close()
