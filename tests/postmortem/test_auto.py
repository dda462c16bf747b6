"""When an incident resolves, one postmortem draft is written, audited and queued for the incident thread."""

from __future__ import annotations

from sqlalchemy import select, update

from runbot.audit import log as audit
from runbot.engine.state import INCIDENTS, OUTBOX
from runbot.postmortem.auto import ACTION, TOPIC, generate_pending, incident_resolved
from tests.support.incident_story import SECRET, tell_story


def outbox(rt):
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(OUTBOX).where(OUTBOX.c.topic == TOPIC)).mappings()]


def drafts(rt):
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(audit.EVENTS).where(audit.EVENTS.c.action == ACTION)).mappings()]


def test_a_resolved_incident_gets_one_draft_saved_audited_and_queued(make_runtime, runbooks_dir, tmp_path):
    story = tell_story(make_runtime, runbooks_dir, tmp_path, postmortem_auto=True, postmortem_format="html")
    rt = story.rt
    rt.engine.outbox_enabled = True  # as when the Slack notifier runs
    path = incident_resolved(rt, story.incident_id)
    assert path == rt.settings.data_dir / "postmortems" / f"{story.incident_id}.html"
    assert path.read_text().startswith("<!DOCTYPE html>") and SECRET not in path.read_text()
    (row,) = outbox(rt)
    assert row["run_id"] is None and row["payload"]["incident_id"] == story.incident_id
    assert row["payload"]["text"].startswith("# Postmortem:") and "data:image" not in row["payload"]["text"]
    assert len(row["payload"]["graph_artifact_ids"]) == 1
    (event,) = drafts(rt)
    assert event["incident_id"] == story.incident_id and event["details"]["path"] == str(path)
    assert incident_resolved(rt, story.incident_id) is None and len(outbox(rt)) == 1  # once only
    assert generate_pending(rt) == []
    with rt.db.read() as conn:
        assert audit.verify_db(conn).ok


def test_the_housekeeping_pass_catches_resolutions_nobody_reported(make_runtime, runbooks_dir, tmp_path):
    story = tell_story(make_runtime, runbooks_dir, tmp_path, postmortem_auto=True)
    rt = story.rt
    assert generate_pending(rt) == [story.incident_id]
    assert (rt.settings.data_dir / "postmortems" / f"{story.incident_id}.md").exists()
    assert outbox(rt) == []  # no notifier running: nothing queued, the draft is still recorded
    assert len(drafts(rt)) == 1 and generate_pending(rt) == []


def test_open_incidents_and_a_disabled_setting_get_no_draft(make_runtime, runbooks_dir, tmp_path):
    story = tell_story(make_runtime, runbooks_dir, tmp_path, postmortem_auto=True)
    rt = story.rt
    with rt.db.tx() as conn:
        conn.execute(update(INCIDENTS).values(status="open", resolved_at=None))
    assert incident_resolved(rt, story.incident_id) is None and generate_pending(rt) == []
    rt.settings = rt.settings.model_copy(update={"postmortem_auto": False})
    with rt.db.tx() as conn:
        conn.execute(update(INCIDENTS).values(status="resolved", resolved_at=story.times["resolved"]))
    assert incident_resolved(rt, story.incident_id) is None and drafts(rt) == []
