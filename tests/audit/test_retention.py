"""Retention deletes old runs and alerts, and audit events only when configured; every deletion is audited,
and a chain whose prefix retention removed still verifies from the recorded anchor."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from runbot.audit import log as audit
from runbot.audit.export import export_chunks, verify_export_file
from runbot.audit.records import ExportFilter
from runbot.audit.retention import apply_retention, purge_audit, verify_chain
from runbot.engine.state import APPROVALS, ARTIFACTS, RUNS, STEPS, VOTES
from runbot.store import tables
from runbot.store.types import utcnow
from tests.engine.helpers import count, drive, start

ALERTS = tables.Alert.__table__


def verify(rt):
    with rt.db.read() as conn:
        return audit.verify_db(conn)


def events(rt, action):
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(audit.EVENTS).where(audit.EVENTS.c.action == action)).mappings()]


def test_nothing_is_deleted_unless_configured(story):
    before = count(story.rt, audit.EVENTS)
    report = apply_retention(story.rt.db, story.rt.settings, now=utcnow() + timedelta(days=3650))
    assert (report.runs_deleted, report.alerts_deleted, report.audit_deleted) == (0, 0, 0)
    assert count(story.rt, audit.EVENTS) == before and count(story.rt, RUNS) == 2


def test_old_runs_go_with_their_journal_approvals_votes_and_artifacts_and_the_audit_trail_stays(story):
    rt = story.rt
    fresh = start(rt, "housekeeping-check", manual=True)
    drive(rt, fresh)
    with rt.db.tx() as conn:  # the story's runs finished 40 days ago
        conn.execute(RUNS.update().where(RUNS.c.id != fresh).values(finished_at=utcnow() - timedelta(days=40)))
    events_before = count(rt, audit.EVENTS)
    settings = rt.settings.model_copy(update={"retention_runs_days": 30})
    report = apply_retention(rt.db, settings, actor="cli:ops")
    assert report.runs_deleted == 2
    assert count(rt, RUNS) == 1
    for table in (STEPS, APPROVALS, ARTIFACTS):
        assert count(rt, table, table.c.run_id.in_([story.run_id, story.noise_run_id])) == 0
    assert count(rt, VOTES) == 0
    assert count(rt, STEPS, STEPS.c.run_id == fresh) > 0
    (deleted,) = events(rt, "retention.runs_deleted")
    assert deleted["actor"] == "cli:ops" and deleted["details"]["count"] == 2
    assert sorted(deleted["details"]["run_ids"]) == sorted([story.run_id, story.noise_run_id])
    assert count(rt, audit.EVENTS) == events_before + 1  # audit events are kept, the deletion is added
    assert verify(rt).ok


def test_old_alerts_go_but_not_those_of_open_incidents(story):
    rt = story.rt
    old = utcnow() - timedelta(days=20)
    with rt.db.tx() as conn:
        conn.execute(ALERTS.update().values(received_at=old))
        conn.execute(ALERTS.update().where(ALERTS.c.id == story.alert_ids[1]).values(incident_id="inc-still-open"))
        conn.execute(text("INSERT INTO incidents (id, group_key, status, title, labels, opened_at, updated_at, reopened) "
                          "VALUES ('inc-still-open', 'g2', 'open', 't', '{}', :t, :t, 0)"), {"t": old.replace(tzinfo=None)})
    report = apply_retention(rt.db, rt.settings.model_copy(update={"retention_alerts_days": 14}))
    assert report.alerts_deleted == 1
    with rt.db.read() as conn:
        assert [r.id for r in conn.execute(select(ALERTS.c.id))] == [story.alert_ids[1]]
    (deleted,) = events(rt, "retention.alerts_deleted")
    assert deleted["details"]["count"] == 1 and verify(rt).ok


def test_audit_retention_leaves_an_anchor_the_verifier_starts_from(story_on, tmp_path):
    rt = story_on.rt
    with rt.db.read() as conn:
        total = conn.execute(select(func.count()).select_from(audit.EVENTS)).scalar_one()
        cut = conn.execute(select(audit.EVENTS.c.ts).where(audit.EVENTS.c.seq == 10)).one()
    with rt.db.tx() as conn:  # make events 1..9 old and everything after recent
        conn.execute(audit.EVENTS.update().where(audit.EVENTS.c.seq >= 10).values(ts=cut.ts))
    rehash(rt)
    with rt.db.read() as conn:
        ninth = conn.execute(select(audit.EVENTS.c.hash).where(audit.EVENTS.c.seq == 9)).scalar_one()
    deleted, anchor = purge_audit(rt.db, cut.ts, actor="cli:ops")
    assert deleted == 9 and anchor == (9, ninth)
    (ev,) = events(rt, "audit.retention")
    assert ev["details"]["deleted_through_seq"] == 9 and ev["details"]["deleted_through_hash"] == ninth
    assert ev["seq"] == total + 1
    result = verify(rt)
    assert result.ok and result.anchor_seq == 9 and result.count == total - 9 + 1
    path = tmp_path / "after-retention.jsonl"
    path.write_text("".join(export_chunks(rt.db, "jsonl", ExportFilter())), encoding="utf-8")
    offline = verify_export_file(path)
    assert offline.ok and offline.anchor_seq == 9 and offline.head_seq == total + 1


def test_a_prefix_deleted_without_a_retention_event_fails_verification(story):
    rt = story.rt
    with rt.db.tx() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq <= 5"))
    result = verify(rt)
    assert not result.ok and "no audit.retention event records their deletion" in result.problem


def test_a_retention_event_that_records_a_different_anchor_does_not_cover_a_larger_deletion(story):
    rt = story.rt
    with rt.db.read() as conn:
        t = conn.execute(select(audit.EVENTS.c.ts).where(audit.EVENTS.c.seq == 4)).scalar_one()
    with rt.db.tx() as conn:
        conn.execute(audit.EVENTS.update().where(audit.EVENTS.c.seq >= 4).values(ts=t))
    rehash(rt)
    purge_audit(rt.db, t)  # legitimately removes 1..3
    assert verify(rt).ok
    with rt.db.tx() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq IN (4, 5)"))  # and then someone removes two more
    result = verify(rt)
    assert not result.ok


def test_retention_refuses_to_delete_a_broken_chain(story):
    rt = story.rt
    with rt.db.tx() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"))
    with pytest.raises(RuntimeError, match="chain is broken"):
        purge_audit(rt.db, utcnow() + timedelta(days=1))
    assert count(rt, audit.EVENTS, audit.EVENTS.c.seq == 1) == 1


def test_deleting_everything_old_keeps_a_verifiable_chain_of_one(story):
    rt = story.rt
    report = apply_retention(rt.db, rt.settings.model_copy(update={"retention_audit_days": 1}),
                             now=utcnow() + timedelta(days=2))
    assert report.audit_deleted > 0 and report.audit_anchor is not None
    assert count(rt, audit.EVENTS) == 1
    result = verify_chain(rt.db)
    assert result.ok and result.anchor_seq == report.audit_anchor[0]


def rehash(rt):
    """Re-seal the chain after a test moved timestamps (what appending them at those times would have produced)."""
    with rt.db.tx() as conn:
        prev = audit.GENESIS
        for r in conn.execute(select(audit.EVENTS).order_by(audit.EVENTS.c.seq)).mappings().all():
            rec = {**dict(r), "prev_hash": prev}
            rec["hash"] = prev = audit.event_hash(rec)
            conn.execute(audit.EVENTS.update().where(audit.EVENTS.c.seq == r["seq"]).values(prev_hash=rec["prev_hash"],
                                                                                          hash=rec["hash"]))
        conn.execute(audit.HEAD.update().values(hash=prev))


def test_old_runs_take_their_finished_vault_leases_but_a_live_lease_stays_until_revoked(story):
    rt = story.rt
    leases = tables.VaultLease.__table__
    now = utcnow()
    base = {"run_id": story.run_id, "step_id": "creds", "path": "database/creds/ro", "holder": "x", "issued_at": now,
            "expires_at": None, "revoked_at": None, "revoke_reason": None}  # fmt: skip
    with rt.db.tx() as conn:
        conn.execute(leases.insert(), [
            {**base, "lease_id": "database/creds/ro/revoked", "revoked_at": now, "revoke_reason": "run ended"},
            {**base, "lease_id": "database/creds/ro/expired", "expires_at": now - timedelta(hours=1)},
            {**base, "lease_id": "database/creds/ro/live", "expires_at": now + timedelta(hours=1)},
        ])  # fmt: skip
        conn.execute(RUNS.update().values(finished_at=now - timedelta(days=40)))
    settings = rt.settings.model_copy(update={"retention_runs_days": 30})
    assert apply_retention(rt.db, settings).runs_deleted == 2
    with rt.db.read() as conn:
        left = [r.lease_id for r in conn.execute(select(leases.c.lease_id))]
    assert left == ["database/creds/ro/live"]  # the sweeper still has to revoke it; its run is gone
    with rt.db.tx() as conn:  # ... which it then does
        conn.execute(leases.update().values(revoked_at=utcnow(), revoke_reason="run is over"))
    apply_retention(rt.db, settings)
    assert count(rt, leases) == 0
