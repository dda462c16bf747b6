"""The recorded incident every export, report and retention test starts from (see support/incident_story)."""

from __future__ import annotations

import pytest

from tests.support.incident_story import Story, tell_story


@pytest.fixture
def story(make_runtime, runbooks_dir, tmp_path) -> Story:
    """On SQLite: most tests."""
    return tell_story(make_runtime, runbooks_dir, tmp_path)


@pytest.fixture
def story_on(db_url, make_runtime, runbooks_dir, tmp_path) -> Story:
    """On SQLite and on PostgreSQL: where the backend could change what is read back and hashed."""
    return tell_story(make_runtime, runbooks_dir, tmp_path, db_url)
