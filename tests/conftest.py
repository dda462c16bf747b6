"""Shared fixtures: real databases (SQLite file and the local PostgreSQL) and a runtime factory."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

# Tests configure runbot explicitly; the checkout's own runbot.yaml (the demo's) must not leak into them.
# Tests of config discovery set RUNBOT_CONFIG themselves.
os.environ.setdefault("RUNBOT_CONFIG", "none")

PG_ADMIN_URL = os.environ.get("RUNBOT_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> bool:
    try:
        eng = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(sa.text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:
        return False


def _start_pg() -> None:
    try:
        versions = os.listdir("/etc/postgresql")
        if versions:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
                           check=False, capture_output=True, timeout=60)
    except Exception:
        pass


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    if not _pg_available():
        _start_pg()
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    eng = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield eng
    eng.dispose()


@pytest.fixture
def pg_url(pg_admin: sa.Engine) -> Iterator[str]:
    name = f"runbot_test_{secrets.token_hex(4)}"
    with pg_admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with pg_admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runbot.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def runbooks_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runbooks"
    d.mkdir()
    return d


def write_runbook(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@pytest.fixture
def make_runtime(tmp_path: Path, runbooks_dir: Path) -> Iterator[Callable[..., Any]]:
    """Build a real Runtime (database migrated, runbooks loaded) on the given database URL."""
    from runbot.app import build_runtime
    from runbot.settings import Settings

    made: list[Any] = []

    def make(db_url: str | None = None, **overrides: Any) -> Any:
        settings = Settings(data_dir=tmp_path / "data", runbooks_dir=runbooks_dir,
                            database_url=db_url or f"sqlite:///{tmp_path / 'runbot.db'}", **overrides)
        rt = build_runtime(settings)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        with contextlib.suppress(Exception):
            rt.close()


# ---- the recorded incident that export, report, retention and postmortem tests start from ----------------


@pytest.fixture
def story(make_runtime: Callable[..., Any], runbooks_dir: Path, tmp_path: Path) -> Any:
    """On SQLite: most tests (see support/incident_story)."""
    from tests.support.incident_story import tell_story

    return tell_story(make_runtime, runbooks_dir, tmp_path)


@pytest.fixture
def story_on(db_url: str, make_runtime: Callable[..., Any], runbooks_dir: Path, tmp_path: Path) -> Any:
    """On SQLite and on PostgreSQL: where the backend could change what is read back and hashed."""
    from tests.support.incident_story import tell_story

    return tell_story(make_runtime, runbooks_dir, tmp_path, db_url)


@pytest.fixture
def hostile(make_runtime: Callable[..., Any], runbooks_dir: Path) -> Any:
    """An incident written by an attacker (see support/hostile): for the export and postmortem safety tests."""
    from tests.support.hostile import tell_hostile_story

    return tell_hostile_story(make_runtime, runbooks_dir)
