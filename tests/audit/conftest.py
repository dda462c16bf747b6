"""The `runbot` command run in-process against the recorded incident (`story`), for the audit CLI tests."""

from __future__ import annotations

import pytest

from runbot.cli.main import main


@pytest.fixture
def cli(story, monkeypatch, capsys):
    monkeypatch.setenv("RUNBOT_DATABASE_URL", story.rt.settings.effective_database_url)
    monkeypatch.setenv("RUNBOT_DATA_DIR", str(story.rt.settings.data_dir))
    monkeypatch.setenv("RUNBOT_RUNBOOKS_DIR", str(story.rt.settings.runbooks_dir))

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["runbot", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
