"""Slack's durable state: message refs (for chat.update after a restart), seen deliveries, outbox nudges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from runbot.store import tables
from runbot.store.db import Database
from runbot.store.types import utcnow

MESSAGES = tables.SlackMessage.__table__  # type: ignore[attr-defined]
SEEN = tables.SlackSeenEvent.__table__  # type: ignore[attr-defined]
SEEN_KEEP = timedelta(days=1)  # Slack retries within minutes; a day is plenty


@dataclass
class Ref:
    key: str
    kind: str
    channel: str
    ts: str | None
    thread_ts: str | None
    rendered_hash: str | None
    run_id: str | None = None
    approval_id: str | None = None


class SlackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- message refs -------------------------------------------------------------------------------------

    def ref(self, key: str) -> Ref | None:
        with self.db.read() as conn:
            row = conn.execute(select(MESSAGES).where(MESSAGES.c.key == key)).mappings().first()
        return _ref(row) if row else None

    def refs_for_run(self, run_id: str) -> list[Ref]:
        with self.db.read() as conn:
            rows = conn.execute(select(MESSAGES).where(MESSAGES.c.run_id == run_id).order_by(MESSAGES.c.id)).mappings()
            return [_ref(r) for r in rows]

    def save(self, ref: Ref) -> None:
        """Insert or replace the ref for `ref.key`."""
        now = utcnow()
        values: dict[str, Any] = {"kind": ref.kind, "channel": ref.channel, "ts": ref.ts, "thread_ts": ref.thread_ts,
                                  "rendered_hash": ref.rendered_hash, "run_id": ref.run_id,
                                  "approval_id": ref.approval_id, "updated_at": now}  # fmt: skip
        with self.db.tx() as conn:
            if conn.execute(update(MESSAGES).where(MESSAGES.c.key == ref.key).values(**values)).rowcount == 0:
                conn.execute(insert(MESSAGES).values(key=ref.key, created_at=now, **values))

    def set_hash(self, key: str, digest: str) -> None:
        with self.db.tx() as conn:
            conn.execute(update(MESSAGES).where(MESSAGES.c.key == key).values(rendered_hash=digest, updated_at=utcnow()))

    # ---- dedupe of retried / replayed deliveries ---------------------------------------------------------------

    def first_time(self, key: str, kind: str) -> bool:
        """Record `key`; False if it was recorded before (a Slack retry or a replayed request)."""
        try:
            with self.db.tx() as conn:
                conn.execute(insert(SEEN).values(key=key[:255], kind=kind, seen_at=utcnow()))
        except IntegrityError:
            return False
        return True

    def prune_seen(self) -> int:
        with self.db.tx() as conn:
            return int(conn.execute(delete(SEEN).where(SEEN.c.seen_at < utcnow() - SEEN_KEEP)).rowcount or 0)


def _ref(row: Any) -> Ref:
    return Ref(row["key"], row["kind"], row["channel"], row["ts"], row["thread_ts"], row["rendered_hash"],
               row["run_id"], row["approval_id"])  # fmt: skip
