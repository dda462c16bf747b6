"""The SQLite database, its -wal and -shm, and the directories runbot makes for them are private to its user.

A umask of 022 (the common default) would make them world-readable: step outputs, approvals and the audit
trail for every local user. Checked with the umask a careless service manager leaves.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from runbot.store.db import Database


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_files_and_new_directories_are_private_under_umask_022(tmp_path, loose_umask):
    path = tmp_path / "var" / "runbot" / "runbot.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.upgrade()
        with db.tx() as conn:
            conn.execute(text("CREATE TABLE probe (x INTEGER)"))
            conn.execute(text("INSERT INTO probe VALUES (1)"))
        with db.read() as conn:
            assert conn.execute(text("SELECT x FROM probe")).scalar() == 1
        files = [path, path.with_name("runbot.db-wal"), path.with_name("runbot.db-shm")]
        assert all(f.exists() for f in files), "WAL mode keeps -wal and -shm beside the database"
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    finally:
        db.dispose()


def test_a_database_left_world_readable_by_an_earlier_version_is_tightened(tmp_path, loose_umask):
    path = tmp_path / "runbot.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    db.dispose()
    os.chmod(path, 0o644)
    before = mode(tmp_path)
    db = Database(f"sqlite:///{path}")
    try:
        with db.read() as conn:
            conn.execute(text("SELECT 1"))
        assert mode(path) == 0o600
        assert mode(tmp_path) == before  # an existing directory (maybe shared) is not touched
    finally:
        db.dispose()
