"""Streaming audit exports (JSONL, CSV, Markdown, HTML) and offline verification of JSONL exports.

Every format is produced as an iterator of text chunks, one per batch of events, so a million events
never sit in memory and the same generator feeds a file (CLI) or an HTTP response (API).

A JSONL export is verifiable offline: each line is one event exactly as it was hashed (plus its hash),
written in canonical form, and the last line is a head record with the chain head at export time, the
number of events and a digest over their hashes. `verify_export_file` recomputes every hash, checks the
links between consecutive events, and the head: an edited byte, a removed line or a cut-off end fails.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from runbot import mdsafe
from runbot.audit import log as audit
from runbot.audit.records import (
    ExportFilter,
    actor_kind,
    approval_votes,
    chain_head,
    decision_of,
    iso,
    iter_batches,
    iter_raw,
    mask_json_text,
    raw_approval_ids,
    raw_details,
    raw_ts,
    run_versions,
    split_params,
    view,
)
from runbot.audit.summary import summarize
from runbot.store.db import Database
from runbot.store.types import utcnow

__all__ = ["CONTENT_TYPES", "FORMATS", "ExportFilter", "export_chunks", "summarize", "verify_export_file",
           "verify_export_lines", "write_export"]  # fmt: skip

FORMAT_VERSION = "runbot-audit-export/1"
FORMATS = ("jsonl", "csv", "md", "html")
CONTENT_TYPES = {
    "jsonl": "application/x-ndjson; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
EVENT_KEYS = frozenset((*audit.CONTENT_FIELDS, "hash"))
CSV_COLUMNS = ("seq", "time", "actor", "actor_kind", "actor_name", "action", "incident_id", "run_id", "step_id",
               "runbook", "runbook_version", "parameters", "decision", "approvers", "outcome", "details",
               "prev_hash", "hash")  # fmt: skip


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_dumps = _ENCODER.encode  # the canonical form of every line: sorted keys, no spaces, UTF-8
_str = json.encoder.encode_basestring


@dataclass
class Tally:
    """What an export wrote, accumulated as it streams: feeds the head record."""

    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    digest: Any = field(default_factory=hashlib.sha256)

    def add(self, rec: dict[str, Any]) -> None:
        self.add_raw(rec["seq"], rec["hash"])

    def add_raw(self, seq: int, hash_: str) -> None:
        self.count += 1
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.digest.update(hash_.encode() + b"\n")


def head_record(flt: ExportFilter, head: tuple[int, str], tally: Tally) -> dict[str, Any]:
    body = {
        "kind": "head",
        "format": FORMAT_VERSION,
        "exported_at": iso(utcnow()),
        "filters": flt.as_dict(),
        "complete": flt.is_empty,
        "count": tally.count,
        "first_seq": tally.first_seq,
        "last_seq": tally.last_seq,
        "digest": tally.digest.hexdigest(),
        "chain_head": {"seq": head[0], "hash": head[1]},
    }
    body["self_hash"] = hashlib.sha256(_dumps(body).encode()).hexdigest()
    return body


# ---- formats ----------------------------------------------------------------------------------------------


def _line(action: str, actor: str, details: Any, hash_: str, incident_id: str | None, outcome: str | None,
          prev_hash: str, run_id: str | None, runbook: str | None, runbook_version: str | None, seq: int,
          step_id: str | None, ts: str) -> str:  # fmt: skip
    """Canonical JSON built field by field in sorted-key order: byte-identical to `_dumps` of the same dict
    (the verifier checks exactly that) at a fraction of the cost, which keeps a million-event export quick."""
    n = "null"
    return (f'{{"action":{_str(action)},"actor":{_str(actor)},"details":{n if details is None else _dumps(details)},'
            f'"hash":{_str(hash_)},"incident_id":{n if incident_id is None else _str(incident_id)},'
            f'"outcome":{n if outcome is None else _str(outcome)},"prev_hash":{_str(prev_hash)},'
            f'"run_id":{n if run_id is None else _str(run_id)},"runbook":{n if runbook is None else _str(runbook)},'
            f'"runbook_version":{n if runbook_version is None else _str(runbook_version)},"seq":{int(seq)},'
            f'"step_id":{n if step_id is None else _str(step_id)},"ts":{_str(ts)}}}')


def event_line(rec: dict[str, Any]) -> str:
    """One event as a JSONL line: the hashed fields (ts as the hashed ISO string) plus the hash."""
    ts = rec["ts"]
    return _line(rec["action"], rec["actor"], rec["details"], rec["hash"], rec["incident_id"], rec["outcome"],
                 rec["prev_hash"], rec["run_id"], rec["runbook"], rec["runbook_version"], rec["seq"], rec["step_id"],
                 ts if isinstance(ts, str) else iso(ts))  # fmt: skip


def _jsonl(db: Database, flt: ExportFilter, head: tuple[int, str], tally: Tally) -> Iterator[str]:
    for rows in iter_raw(db, flt, head[0]):
        lines = []
        for seq, ts, actor, action, run_id, step_id, inc, rb, rbv, outcome, details, prev, h in rows:
            tally.add_raw(seq, h)
            lines.append(_line(action, actor, raw_details(details), h, inc, outcome, prev, run_id, rb, rbv, seq,
                               step_id, raw_ts(ts)))  # fmt: skip
        yield "\n".join(lines) + "\n"
    yield _dumps(head_record(flt, head, tally)) + "\n"


def _views(db: Database, flt: ExportFilter, head: tuple[int, str], tally: Tally) -> Iterator[list[dict[str, Any]]]:
    for rows in iter_batches(db, flt, head[0]):
        votes = approval_votes(db, rows)
        versions = run_versions(db, {r["run_id"] for r in rows if not r["runbook_version"]})
        out = []
        for r in rows:
            tally.add(r)
            out.append(view(r, votes, versions))
        yield out


def csv_row(v: dict[str, Any]) -> list[Any]:
    """The CSV columns of a `view`: the reference the fast path below must agree with (a test holds it to it)."""
    return [v["seq"], v["time"], v["actor"], v["actor_kind"], v["actor_name"], v["action"], v["incident_id"],
            v["run_id"], v["step_id"], v["runbook"], v["runbook_version"], v["parameters"], v["decision"],
            "; ".join(v["approvers"]), v["outcome"], v["details"], v["prev_hash"], v["hash"]]  # fmt: skip


# OWASP "CSV Injection" (and ASVS 1.2.10, which adds NUL): a cell whose first character is one of these is
# read as a formula by Excel, LibreOffice and Google Sheets. Such a cell is prefixed with a single quote (the
# spreadsheet's "this is text" mark) and quoted; every other cell is plain RFC 4180.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")


def _csv_field(v: Any) -> str:
    s = v if isinstance(v, str) else str(v)
    if s.startswith(FORMULA_START):
        return "\"'" + s.replace('"', '""') + '"'
    if '"' in s or "," in s or "\n" in s or "\r" in s:
        return '"' + s.replace('"', '""') + '"'
    return s


def _csv_fast(r: tuple[Any, ...], votes: dict[str, list[dict[str, Any]]], versions: dict[str, str]) -> str:
    """A CSV line straight from the driver's row (the columns `view` gives, without building it)."""
    seq, ts, actor, action, run_id, step_id, inc, rb, rbv, outcome, details, prev, h = r
    rbv = rbv or versions.get(run_id or "")
    name, decision, approvers = "", "", ""
    time = raw_ts(ts)
    plain = isinstance(details, str) and '"params"' not in details and "\\u" not in details
    if plain and not action.startswith(("approval.", "step.decided")):
        ptxt, dtxt = "", ("" if details in ("{}", "null") else mask_json_text(details))  # plain stored JSON as is
    else:
        d = raw_details(details) or {}
        ptxt, dtxt = split_params(d)
        if action.startswith(("approval.", "step.decided")):
            name, decision, who = decision_of(action, actor, outcome, d, time, votes)
            approvers = "; ".join(who)
    q = _csv_field
    # the fields written unquoted, each after a comma: a comma or quote inside any sends the row field by field,
    # so here ",=" can only be a field that starts with "=" (the quoted ones are neutralised by _csv_field)
    short = f",{actor},{name},{action},{inc},{run_id},{step_id},{rb},{rbv},{decision},{outcome},{prev},{h}"
    if ('"' in short or "\n" in short or "\r" in short or "\t" in short or "\0" in short or short.count(",") != 12
            or ",=" in short or ",+" in short or ",-" in short or ",@" in short):  # rare: field by field
        return csv_line([seq, time, actor, actor_kind(actor), name, action, inc or "", run_id or "", step_id or "",
                         rb or "", rbv or "", ptxt, decision, approvers, outcome or "", dtxt, prev, h])  # fmt: skip
    return (f"{int(seq)},{time},{actor},{actor_kind(actor)},{name},{action},{inc or ''},{run_id or ''},"
            f"{step_id or ''},{rb or ''},{rbv or ''},{q(ptxt)},{decision},{q(approvers)},{outcome or ''},"
            f"{q(dtxt)},{prev},{h}\r\n")  # fmt: skip


def csv_line(row: Iterable[Any]) -> str:
    """RFC 4180 with minimal quoting, as csv.writer writes it (inlined: the hot loop), cells that would start a
    formula neutralised (`FORMULA_START`)."""
    return ",".join([_csv_field(v) for v in row]) + "\r\n"


def _csv(db: Database, flt: ExportFilter, head: tuple[int, str], tally: Tally) -> Iterator[str]:
    yield csv_line(CSV_COLUMNS)
    for rows in iter_raw(db, flt, head[0]):
        votes = approval_votes(db, [], raw_approval_ids(rows))
        versions = run_versions(db, {r[4] for r in rows if not r[8]})
        out = []
        for r in rows:
            tally.add_raw(r[0], r[-1])
            out.append(_csv_fast(r, votes, versions))
        yield "".join(out)


def _target(v: dict[str, Any]) -> str:
    parts = []
    if v["runbook"]:
        parts.append(f"{v['runbook']}@{v['runbook_version']}" if v["runbook_version"] else v["runbook"])
    if v["run_id"]:
        parts.append(f"run {v['run_id']}")
    if v["step_id"]:
        parts.append(f"step {v['step_id']}")
    return ", ".join(parts)


def _md(db: Database, flt: ExportFilter, head: tuple[int, str], tally: Tally) -> Iterator[str]:
    given = {k: v for k, v in flt.as_dict().items() if v is not None}
    shown = mdsafe.text(", ".join(f"{k}={v}" for k, v in given.items())) or "none (complete chain)"
    yield ("# runbot audit export\n\n"
           f"Exported {iso(utcnow())}; filters: {shown}.\n\n"
           "| Seq | Time (UTC) | Actor | Action | Incident | Target | Parameters | Decision | Approvers | Outcome | Details | Hash |\n"
           "|---:|---|---|---|---|---|---|---|---|---|---|---|\n")  # fmt: skip
    for views in _views(db, flt, head, tally):
        lines = []
        for v in views:
            actor = f"{v['actor_name']} ({v['actor']})" if v["actor_name"] else v["actor"]
            outcome = mdsafe.cell(v["outcome"] or v["action"] if v["failure"] else v["outcome"])
            cells = [str(v["seq"]), v["time"], actor, v["action"], v["incident_id"], _target(v), v["parameters"],
                     v["decision"], "; ".join(v["approvers"])]  # fmt: skip
            lines.append("| " + " | ".join(mdsafe.cell(c) for c in cells)
                         + f" | {f'**{outcome}**' if v['failure'] and outcome else outcome} | {mdsafe.cell(v['details'])}"
                         f" | {mdsafe.code(v['hash'][:16], table=True)} |")  # fmt: skip
        yield "\n".join(lines) + "\n"
    h = head_record(flt, head, tally)
    yield (f"\n{tally.count} event(s). Chain head at export: #{head[0]} {mdsafe.code(head[1])}; "
           f"digest of exported hashes {mdsafe.code(h['digest'])}. Only the JSONL export can be verified offline.\n")  # fmt: skip


def _html(db: Database, flt: ExportFilter, head: tuple[int, str], tally: Tally) -> Iterator[str]:
    from runbot.audit.report import render_report

    yield from render_report(db, flt, head, tally, _views(db, flt, head, tally))


_WRITERS = {"jsonl": _jsonl, "csv": _csv, "md": _md, "html": _html}


def export_chunks(db: Database, fmt: str, flt: ExportFilter | None = None, *, tally: Tally | None = None) -> Iterator[str]:
    """The export as text chunks; the chain head is taken first, so later appends are not included."""
    if fmt not in _WRITERS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    flt = flt or ExportFilter()
    return _WRITERS[fmt](db, flt, chain_head(db), tally or Tally())


def write_export(db: Database, fmt: str, out: TextIO, flt: ExportFilter | None = None) -> Tally:
    tally = Tally()
    for chunk in export_chunks(db, fmt, flt, tally=tally):
        out.write(chunk)
    return tally


# ---- offline verification -----------------------------------------------------------------------------------


def _fail(count: int, head: tuple[int, str], problem: str, seq: int | None) -> audit.VerifyResult:
    return audit.VerifyResult(False, count, head[0], head[1], problem, seq)


def _parse(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(lines, 1):
        text = line.rstrip("\n")
        if not text:
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            raise _Bad(f"line {n} is not valid JSON (edited or cut off)") from None
        if not isinstance(obj, dict) or _dumps(obj) != text:
            raise _Bad(f"line {n} is not in the canonical form runbot writes (edited)")
        yield n, obj


class _Bad(Exception):
    pass


def verify_export_lines(lines: Iterable[str]) -> audit.VerifyResult:
    """Verify a JSONL export given as its lines, in one streaming pass; see `verify_export_file`."""
    tally = Tally()
    state: dict[str, Any] = {"head": None, "prev": None, "problem": None}

    def events() -> Iterator[dict[str, Any]]:
        for n, obj in _parse(lines):
            if state["head"] is not None:
                raise _Bad(f"line {n} follows the head record (appended after export)")
            if obj.get("kind") == "head":
                state["head"] = obj
                continue
            if set(obj) != EVENT_KEYS or not isinstance(obj.get("seq"), int) or isinstance(obj["seq"], bool):
                raise _Bad(f"line {n} is not an audit event record (its fields differ)")
            if state["problem"] is None:
                state["problem"] = _check_event(obj, state["prev"])
            tally.add(obj)
            state["prev"] = obj
            yield obj

    gen = events()
    try:
        chain = audit.verify_records(gen, None)  # meaningful only if the export is the complete chain
        for _ in gen:  # the walk stops at the first break; read on for the head record
            pass
    except _Bad as exc:
        return _fail(tally.count, (0, audit.GENESIS), str(exc), None)
    head = state["head"]
    if head is None:
        return _fail(tally.count, (0, audit.GENESIS), "the export has no head record: it was cut off", None)
    result = _check_head(head, tally, state["problem"])
    if not result.ok or not head.get("complete"):
        return result
    if not chain.ok:
        return _fail(tally.count, (result.head_seq, result.head_hash), chain.problem or "broken chain", chain.broken_seq)
    if (chain.head_seq, chain.head_hash) != (result.head_seq, result.head_hash):
        return _fail(tally.count, (result.head_seq, result.head_hash),
                     f"the chain ends at event {chain.head_seq} but the head records event {result.head_seq}: "
                     "events were removed from the end", chain.head_seq + 1)  # fmt: skip
    return audit.VerifyResult(True, tally.count, result.head_seq, result.head_hash, anchor_seq=chain.anchor_seq)


def _check_event(rec: dict[str, Any], prev: dict[str, Any] | None) -> tuple[str, int | None] | None:
    seq = rec["seq"]
    if audit.event_hash(rec) != rec["hash"]:
        return (f"event {seq} ({rec.get('action')}) was modified: its content no longer matches its hash", seq)
    if prev is not None:
        if seq <= prev["seq"]:
            return (f"event {seq} follows event {prev['seq']}: out of order or duplicated", seq)
        if seq == prev["seq"] + 1 and rec["prev_hash"] != prev["hash"]:
            return (f"event {seq} does not link to event {prev['seq']}: prev_hash differs", seq)
    return None


def _check_head(h: dict[str, Any], tally: Tally, problem: tuple[str, int | None] | None) -> audit.VerifyResult:
    try:
        chain = (int(h["chain_head"]["seq"]), str(h["chain_head"]["hash"]))
        body = {k: v for k, v in h.items() if k != "self_hash"}
        if hashlib.sha256(_dumps(body).encode()).hexdigest() != h.get("self_hash") or h.get("format") != FORMAT_VERSION:
            return _fail(tally.count, chain, "the head record was modified", None)
    except (KeyError, TypeError, ValueError):
        return _fail(tally.count, (0, audit.GENESIS), "the head record is malformed", None)
    if problem is not None:
        return _fail(tally.count, chain, problem[0], problem[1])
    if tally.count != h["count"] or tally.digest.hexdigest() != h["digest"]:
        return _fail(tally.count, chain,
                     f"the head record lists {h['count']} event(s) ending at {h['last_seq']}, the file has "
                     f"{tally.count} ending at {tally.last_seq}: events were removed or added",
                     tally.last_seq + 1 if tally.last_seq is not None else None)  # fmt: skip
    if h["first_seq"] != tally.first_seq or h["last_seq"] != tally.last_seq:
        return _fail(tally.count, chain, "the head record's first/last event differ from the file", None)
    if tally.last_seq is not None and tally.last_seq > chain[0]:
        return _fail(tally.count, chain, f"event {tally.last_seq} is beyond the chain head {chain[0]}", tally.last_seq)
    return audit.VerifyResult(True, tally.count, chain[0], chain[1])


def verify_export_file(path: Path | str) -> audit.VerifyResult:
    """Check a JSONL export offline: every hash, the links, the head record; a complete export as one chain.

    The result's head is the chain head recorded at export time: compare it with a head you anchored
    elsewhere (`runbot audit head`) to detect an export that was rewritten as a whole or cut short.
    """
    p = Path(path)
    try:
        with p.open(encoding="utf-8", newline="\n") as f:
            return verify_export_lines(f)
    except UnicodeDecodeError:
        return audit.VerifyResult(False, 0, 0, audit.GENESIS, f"{p} is not UTF-8 text (edited, or not an export)")
    except OSError as exc:
        return audit.VerifyResult(False, 0, 0, audit.GENESIS, f"cannot read {p}: {exc.strerror}")
