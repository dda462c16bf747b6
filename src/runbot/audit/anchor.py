"""Saved chain heads (anchors) and checking a chain or an export against one.

The chain is unkeyed: whoever can write the database can rebuild it from any point, head included, and it
verifies. What they cannot rebuild is a head kept somewhere else. An anchor is (seq, hash) of one event as
it was published; a later chain must still hold that event with that hash.

One reader takes every form runbot writes a head in: `runbot audit head` ("SEQ HASH"), `SEQ:HASH`, the
published log/Slack line ("runbot audit head: SEQ HASH ..."), `GET /api/v1/audit/head` or the webhook body
(JSON with seq and hash), an export's head record, or a whole JSONL export (its last line). A file with many
heads (a log of publications) counts by its last one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from runbot.audit import log as audit

_PAIR = re.compile(r"(?<![0-9A-Za-z])(\d+)(?:\s+|:)([0-9a-f]{64})(?![0-9A-Za-z])")


class AnchorError(ValueError):
    """An anchor that cannot be read; the message says what was expected."""


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def parse_anchor(text: str) -> Anchor:
    """`SEQ:HASH` or `SEQ HASH` (the output of `runbot audit head`)."""
    m = _PAIR.fullmatch(text.strip())
    if m is None:
        raise AnchorError(f"{text.strip()[:80]!r} is not SEQ:HASH (a sequence number and a 64-digit hex hash)")
    return Anchor(int(m.group(1)), m.group(2))


def _from_json(obj: Any) -> Anchor | None:
    if not isinstance(obj, dict):
        return None
    if obj.get("kind") == "head" and isinstance(obj.get("chain_head"), dict):
        obj = obj["chain_head"]
    seq, hash_ = obj.get("seq"), obj.get("hash")
    if isinstance(seq, int) and not isinstance(seq, bool) and isinstance(hash_, str) and re.fullmatch(r"[0-9a-f]{64}", hash_):
        return Anchor(seq, hash_)
    return None


def read_anchor_text(text: str) -> Anchor:
    """The last head written in `text` (see the module docstring for the forms)."""
    for line in reversed([x for x in text.splitlines() if x.strip()]):
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                found = _from_json(json.loads(stripped))
            except ValueError:
                found = None
            if found is not None:
                return found
            continue
        matches = _PAIR.findall(stripped)
        if matches:
            seq, hash_ = matches[-1]
            return Anchor(int(seq), hash_)
    raise AnchorError("no chain head in it (expected `runbot audit head` output, SEQ:HASH, or a head record)")


def read_anchor_file(path: Path) -> Anchor:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AnchorError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return read_anchor_text(text)
    except AnchorError as exc:
        raise AnchorError(f"{path}: {exc}") from None


def check_db(conn: Connection, anchor: Anchor, result: audit.VerifyResult) -> str | None:
    """Why the stored chain (already verified as `result`) does not hold the anchor, or None if it does."""
    if anchor.seq == 0:
        return None if anchor.hash == audit.GENESIS else "anchor 0 must carry the genesis hash (64 zeros)"
    if anchor.seq > result.head_seq:
        return (f"the chain ends at event {result.head_seq} but the anchor is event {anchor.seq}: events were "
                "removed from the end (or the anchor belongs to another database)")  # fmt: skip
    got = conn.execute(select(audit.EVENTS.c.hash).where(audit.EVENTS.c.seq == anchor.seq)).scalar()
    if got is None and result.anchor_seq is not None and anchor.seq == result.anchor_seq:
        got = conn.execute(select(audit.EVENTS.c.prev_hash).where(audit.EVENTS.c.seq > anchor.seq)
                           .order_by(audit.EVENTS.c.seq).limit(1)).scalar()  # fmt: skip
    return _compare(anchor, got, result.anchor_seq)


def check_export(path: Path, anchor: Anchor, result: audit.VerifyResult) -> str | None:
    """Why a JSONL export (already verified as `result`) does not hold the anchor, or None if it does."""
    if anchor.seq > result.head_seq:
        return f"the anchor (event {anchor.seq}) is newer than the export (head {result.head_seq})"
    got: str | None = None
    with path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "head":
                if rec["chain_head"]["seq"] == anchor.seq:
                    got = str(rec["chain_head"]["hash"])
                break
            if rec["seq"] == anchor.seq:
                got = str(rec["hash"])
                break
            if rec["seq"] == anchor.seq + 1:
                got = str(rec["prev_hash"])  # the event itself is not in the file, its successor names its hash
                break
    if got is None:
        return f"event {anchor.seq} is not in {path} (a filtered export, or removed by retention): it cannot be checked"
    return _compare(anchor, got, None)


def _compare(anchor: Anchor, got: str | None, retained_from: int | None) -> str | None:
    if got is None:
        if retained_from is not None and anchor.seq < retained_from:
            return (f"event {anchor.seq} was deleted by retention (events up to {retained_from} are gone), so the "
                    "anchor cannot be checked")  # fmt: skip
        return f"event {anchor.seq} is not in the chain (the chain was cut)"
    if got != anchor.hash:
        return f"event {anchor.seq} has hash {got[:16]}…, not the anchored {anchor.hash[:16]}…: history was rewritten"
    return None
