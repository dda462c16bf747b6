"""Slack credentials and mode, resolved once at start (from settings, or the secrets provider via `secret:`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from runbot.redaction import REGISTRY

if TYPE_CHECKING:
    from runbot.engine.ports import SecretProvider
    from runbot.settings import Settings

SECRET_PREFIX = "secret:"  # noqa: S105 - a prefix, not a password


class SlackConfigError(ValueError):
    """Slack is half configured; the message says what is missing."""


@dataclass(frozen=True)
class SlackCredentials:
    bot_token: str
    signing_secret: str | None
    app_token: str | None
    mode: str  # http | socket

    def __repr__(self) -> str:  # never print the values
        return f"SlackCredentials(mode={self.mode!r}, bot_token=****, app_token={'****' if self.app_token else None})"


def enabled(settings: Settings) -> bool:
    return bool(settings.slack_bot_token and settings.slack_bot_token.get_secret_value())


def resolve(value: SecretStr | None, secrets: SecretProvider) -> str | None:
    """The plain value; `secret:PATH#KEY` is fetched from the secrets provider. Registered for redaction."""
    if value is None or not value.get_secret_value():
        return None
    raw = value.get_secret_value()
    if raw.startswith(SECRET_PREFIX):
        raw = secrets.fetch(raw[len(SECRET_PREFIX):])
    REGISTRY.global_redactor.register(raw)
    return raw


def credentials(settings: Settings, secrets: SecretProvider) -> SlackCredentials:
    bot = resolve(settings.slack_bot_token, secrets)
    if not bot:
        raise SlackConfigError("RUNBOT_SLACK_BOT_TOKEN is not set")
    signing = resolve(settings.slack_signing_secret, secrets)
    app_token = resolve(settings.slack_app_token, secrets)
    mode = settings.slack_mode
    if mode == "auto":
        mode = "socket" if app_token else "http"
    if mode == "socket" and not app_token:
        raise SlackConfigError("Socket Mode needs RUNBOT_SLACK_APP_TOKEN (an xapp- app-level token)")
    if mode == "http" and not signing:
        raise SlackConfigError("HTTP mode needs RUNBOT_SLACK_SIGNING_SECRET to verify requests from Slack")
    return SlackCredentials(bot, signing, app_token, mode)
