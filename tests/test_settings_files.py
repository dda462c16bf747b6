"""RUNBOT_<CREDENTIAL>_FILE: credentials from mounted files (Kubernetes Secrets, Docker secrets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runbot.settings import Settings
from runbot.settings_files import SettingsFileError, credential_fields
from tests.support.runbot_serve import clean_env

RUNBOT = str(Path(sys.executable).with_name("runbot"))


@pytest.fixture(autouse=True)
def _no_runbot_env(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("RUNBOT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RUNBOT_CONFIG", "none")  # not the checkout's runbot.yaml


def secret_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def test_a_token_file_is_read_once_at_build_and_its_trailing_newline_stripped(tmp_path, monkeypatch):
    path = secret_file(tmp_path, "bot", "xoxb-from-a-mounted-secret\n")
    monkeypatch.setenv("RUNBOT_SLACK_BOT_TOKEN_FILE", str(path))
    s = Settings()
    path.write_text("xoxb-changed-later\n")  # read at build time only
    assert s.slack_bot_token is not None
    assert s.slack_bot_token.get_secret_value() == "xoxb-from-a-mounted-secret"


def test_only_one_trailing_newline_goes_and_inner_whitespace_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOT_API_TOKEN_FILE", str(secret_file(tmp_path, "api", "a b\n\n")))
    assert Settings().api_token.get_secret_value() == "a b\n"  # type: ignore[union-attr]


def test_the_database_url_with_its_password_comes_from_a_file(tmp_path, monkeypatch):
    url = "postgresql+psycopg://runbot:pw@db:5432/runbot"
    monkeypatch.setenv("RUNBOT_DATABASE_URL_FILE", str(secret_file(tmp_path, "db", url + "\r\n")))
    assert Settings().effective_database_url == url


def test_every_credential_setting_accepts_a_file():
    names = set(credential_fields(Settings))
    assert {"api_token", "slack_bot_token", "slack_signing_secret", "slack_app_token", "prometheus_password",
            "prometheus_bearer_token", "alertmanager_webhook_token", "alertmanager_webhook_password",
            "alertmanager_api_token", "database_url"} <= names
    # these have a file setting of their own already (re-read when the token stops working)
    assert not names & {"vault_token", "vault_approle_secret_id", "vault_approle_wrapped_secret_id"}


def test_vault_token_file_keeps_its_own_meaning(tmp_path, monkeypatch):
    path = secret_file(tmp_path, "vt", "s.token\n")
    monkeypatch.setenv("RUNBOT_VAULT_TOKEN_FILE", str(path))
    s = Settings()
    assert s.vault_token_file == path and s.vault_token is None


def test_both_the_value_and_the_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOT_API_TOKEN", "inline")
    monkeypatch.setenv("RUNBOT_API_TOKEN_FILE", str(secret_file(tmp_path, "api", "from-file")))
    with pytest.raises(SettingsFileError) as err:
        Settings()
    assert err.value.message == "both RUNBOT_API_TOKEN and RUNBOT_API_TOKEN_FILE are set"


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])  # absent; a directory
def test_an_unreadable_file_is_an_error_naming_the_variable(tmp_path, monkeypatch, make):
    monkeypatch.setenv("RUNBOT_SLACK_APP_TOKEN_FILE", str(make(tmp_path)))
    with pytest.raises(SettingsFileError) as err:
        Settings()
    assert err.value.message.startswith(f"RUNBOT_SLACK_APP_TOKEN_FILE: cannot read {make(tmp_path)}")


def test_the_cli_reports_a_bad_file_in_one_line_and_a_hint_without_the_secret(tmp_path):
    env = clean_env(api_token="inline-secret-value", api_token_file=str(secret_file(tmp_path, "t", "file-secret")),
                    data_dir=str(tmp_path))
    out = subprocess.run([RUNBOT, "config", "show"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "error: both RUNBOT_API_TOKEN and RUNBOT_API_TOKEN_FILE are set",
        "hint: unset one of them: RUNBOT_API_TOKEN_FILE reads the value from a file",
    ]
    assert "inline-secret-value" not in out.stdout + out.stderr and "file-secret" not in out.stdout + out.stderr


def test_config_show_masks_a_credential_read_from_a_file(tmp_path):
    env = clean_env(slack_bot_token_file=str(secret_file(tmp_path, "t", "xoxb-file-secret\n")),
                    data_dir=str(tmp_path))
    out = subprocess.run([RUNBOT, "config", "show"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "xoxb-file-secret" not in out.stdout and '"slack_bot_token": "****"' in out.stdout
