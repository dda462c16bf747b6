"""Attacks on the audit chain by someone who can write the database, and the saved head that catches them.

The chain is unkeyed: a writer can rewrite history and recompute every hash and the head, cut the end off
with the head, or wipe it. `runbot audit verify` alone catches what the other tables prove (an empty or cut
chain while runs and approvals exist); `--head`/`--head-file` with a head saved outside catches the rest.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, select, update

from runbot.audit import log as audit
from runbot.audit.anchor import Anchor, AnchorError, read_anchor_text
from runbot.audit.export import export_chunks
from runbot.audit.records import chain_head
from runbot.store.types import utcnow


def records(rt):
    with rt.db.read() as conn:
        return list(audit.iter_db_records(conn))


def set_head(conn, seq, hash_):
    conn.execute(update(audit.HEAD).where(audit.HEAD.c.id == 1).values(seq=seq, hash=hash_))


def rewrite_history(rt, seq, **changes):
    """Edit event `seq` and re-hash it and every later event, head included: the chain verifies again."""
    recs = records(rt)
    prev = next((r["hash"] for r in recs if r["seq"] == seq - 1), audit.GENESIS)
    with rt.db.tx() as conn:
        for r in recs:
            if r["seq"] < seq:
                continue
            if r["seq"] == seq:
                r.update(changes)
            r["prev_hash"] = prev
            r["hash"] = prev = audit.event_hash(r)
            conn.execute(update(audit.EVENTS).where(audit.EVENTS.c.seq == r["seq"])
                         .values(**{k: r[k] for k in ("prev_hash", "hash", *changes)}))  # fmt: skip
        set_head(conn, recs[-1]["seq"], prev)


def cut_after(rt, keep):
    """Remove the events after `keep` and move the head back: the rest verifies on its own."""
    recs = records(rt)
    with rt.db.tx() as conn:
        conn.execute(delete(audit.EVENTS).where(audit.EVENTS.c.seq > keep))
        set_head(conn, keep, next(r["hash"] for r in recs if r["seq"] == keep) if keep else audit.GENESIS)


def saved_head(story, tmp_path, name="head.txt"):
    """What an operator keeps: `runbot audit head > head.txt`."""
    seq, digest = chain_head(story.rt.db)
    path = tmp_path / name
    path.write_text(f"{seq} {digest}\n")
    return seq, digest, path


def test_verify_checks_a_saved_head_given_inline_or_as_a_file(cli, story, tmp_path):
    seq, digest, path = saved_head(story, tmp_path)
    code, out, _ = cli("audit", "verify", "--head", f"{seq}:{digest}")
    assert code == 0 and f"anchor {seq} matches" in out
    code, out, _ = cli("audit", "verify", "--head-file", str(path))
    assert code == 0 and f"anchor {seq} matches" in out


def test_rewritten_history_with_recomputed_hashes_verifies_alone_but_fails_against_the_saved_head(cli, story, tmp_path):
    seq, _, path = saved_head(story, tmp_path)
    denied = next(r for r in records(story.rt) if r["action"] == "approval.denied")
    rewrite_history(story.rt, denied["seq"], actor="U024ALICE", outcome="approved")
    assert cli("audit", "verify")[0] == 0  # the attack works against the chain alone
    code, _, err = cli("audit", "verify", "--head-file", str(path))
    assert code == 1 and f"does not hold the anchored head {seq}" in err and "history was rewritten" in err
    assert len([x for x in err.strip().splitlines() if x.strip()]) <= 2  # one line and a hint


def test_a_chain_cut_from_the_end_with_its_head_fails_against_the_saved_head(cli, story, tmp_path):
    seq, digest, _ = saved_head(story, tmp_path)
    cut_after(story.rt, seq - 2)
    code, _, err = cli("audit", "verify", "--head", f"{seq}:{digest}")
    assert code == 1 and f"the chain ends at event {seq - 2} but the anchor is event {seq}" in err


def test_a_wiped_chain_fails_while_runs_and_approvals_exist(cli, story):
    cut_after(story.rt, 0)
    with story.rt.db.read() as conn:
        result = audit.verify_db(conn)
    assert not result.ok and result.count == 0 and "the audit trail was wiped" in result.problem
    code, _, err = cli("audit", "verify")
    assert code == 1 and "the chain is empty but the database holds 2 run(s) and 2 approval(s)" in err


def test_a_chain_cut_before_the_newest_run_fails_without_any_anchor(cli, story):
    created = [r for r in records(story.rt) if r["action"] == "run.created"]
    cut_after(story.rt, created[-1]["seq"] - 1)  # the newest run's creation and everything after it
    code, _, err = cli("audit", "verify")
    assert code == 1 and f"run {created[-1]['run_id']} has no run.created event" in err


def test_a_chain_cut_before_the_newest_approval_fails_without_any_anchor(cli, story):
    requested = [r for r in records(story.rt) if r["action"] == "approval.requested"]
    cut_after(story.rt, requested[-1]["seq"] - 1)
    code, _, err = cli("audit", "verify")
    assert code == 1 and "has no approval.requested event" in err


def test_an_export_is_checked_against_a_saved_head_too(cli, story, tmp_path):
    seq, digest, path = saved_head(story, tmp_path)
    export = tmp_path / "all.jsonl"
    export.write_text("".join(export_chunks(story.rt.db, "jsonl")), encoding="utf-8")
    code, out, _ = cli("audit", "verify", "--file", str(export), "--head-file", str(path))
    assert code == 0 and f"anchor {seq} matches" in out
    code, _, err = cli("audit", "verify", "--file", str(export), "--head", f"{seq}:{'e' * 64}")
    assert code == 1 and "history was rewritten" in err
    code, _, err = cli("audit", "verify", "--file", str(export), "--head", f"{seq + 5}:{digest}")
    assert code == 1 and "newer than the export" in err


def test_every_published_form_of_the_head_reads_back(story, tmp_path):
    seq, digest = chain_head(story.rt.db)
    want = Anchor(seq, digest)
    export_text = "".join(export_chunks(story.rt.db, "jsonl"))
    forms = [f"{seq} {digest}\n", f"{seq}:{digest}", f"2026-01-01 runbot audit head: {seq} {digest} instance=h:1\n",
             json.dumps({"seq": seq, "hash": digest}), export_text.splitlines()[-1], export_text,
             f"runbot audit head: 1 {'a' * 64}\nrunbot audit head: {seq} {digest}\n"]  # fmt: skip
    assert [read_anchor_text(f) for f in forms] == [want] * len(forms)
    with pytest.raises(AnchorError):
        read_anchor_text("nothing here\n")


def test_an_unreadable_anchor_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("audit", "verify", "--head", "12:abc")
    assert code == 2 and "is not SEQ:HASH" in err
    (tmp_path / "empty").write_text("")
    code, _, err = cli("audit", "verify", "--head-file", str(tmp_path / "empty"))
    assert code == 2 and "no chain head in it" in err


def test_after_retention_an_anchor_inside_the_deleted_prefix_cannot_vouch_for_the_chain(cli, story, tmp_path):
    from runbot.audit.retention import purge_audit

    old_seq, old_digest = chain_head(story.rt.db)
    recs = records(story.rt)
    boundary = recs[len(recs) // 2]
    with story.rt.db.tx() as conn:  # make the first half old
        conn.execute(update(audit.EVENTS).where(audit.EVENTS.c.seq <= boundary["seq"]).values(ts=utcnow().replace(year=2020)))
    rewrite_history(story.rt, 1)  # the edited timestamps are re-hashed (a consistent chain to start from)
    recs = records(story.rt)
    early = recs[2]
    anchor_at_boundary = next(r for r in recs if r["seq"] == boundary["seq"])
    purge_audit(story.rt.db, utcnow().replace(year=2021))
    assert cli("audit", "verify", "--head", f"{anchor_at_boundary['seq']}:{anchor_at_boundary['hash']}")[0] == 0
    code, _, err = cli("audit", "verify", "--head", f"{early['seq']}:{early['hash']}")
    assert code == 1 and "deleted by retention" in err
    with story.rt.db.read() as conn:
        assert conn.execute(select(audit.EVENTS.c.seq).where(audit.EVENTS.c.seq == early["seq"])).first() is None
    assert old_seq < chain_head(story.rt.db)[0] and old_digest
