"""Configuration: environment and config file, secrets masked when shown."""

import json

from typer.testing import CliRunner

from runbot.cli.main import app
from runbot.settings import Settings


def test_env_overrides_file_and_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "runbot.yaml"
    cfg.write_text("port: 9000\nlog_level: DEBUG\napi_token: from-file-token\n")
    monkeypatch.setenv("RUNBOT_PORT", "9100")
    s = Settings(config_file=cfg)
    assert s.port == 9100 and s.log_level == "DEBUG"
    assert s.api_token is not None and s.api_token.get_secret_value() == "from-file-token"


def test_default_database_is_sqlite_in_the_data_dir(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'runbot.db'}"
    assert Settings(database_url="postgresql+psycopg://u:pw@db/runbot").is_sqlite is False


def test_config_show_masks_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOT_API_TOKEN", "tok-very-secret")
    monkeypatch.setenv("RUNBOT_DATABASE_URL", "postgresql+psycopg://runbot:db-password@db:5432/runbot")
    out = CliRunner().invoke(app, ["config", "show"])
    assert out.exit_code == 0
    assert "tok-very-secret" not in out.output and "db-password" not in out.output
    shown = json.loads(out.output)
    assert shown["api_token"] == "****"
    assert shown["database_url"] == "postgresql+psycopg://runbot:***@db:5432/runbot"
