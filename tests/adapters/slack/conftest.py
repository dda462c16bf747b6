"""Fixtures for the Slack adapter: a fake Slack, an HTTP target for remediations, and runbot instances."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_slack import FakeSlack
from tests.support.http_target import HttpTarget, Reply

from .harness import Bots, standard_fake


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with standard_fake() as f:
        yield f
    # the fake refuses like Slack: a test passes only if runbot sent nothing Slack would have refused
    assert f.refusals == [], f.refusals


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    with HttpTarget() as t:
        t.route("/health", Reply(json={"status": "ok", "errors": 0.07}))
        t.route("/rollback", Reply(json={"rolled_back": True}), method="POST")
        yield t


@pytest.fixture
def bots(tmp_path: Path, fake: FakeSlack, target: HttpTarget) -> Iterator[Bots]:
    b = Bots(tmp_path, fake, target)
    try:
        yield b
    finally:
        b.stop_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def on_db(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings overrides that put a bot on SQLite (its data dir) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    return {"database_url": str(request.getfixturevalue("pg_url"))}
