"""The intake worker: turns accepted deliveries into alerts, incidents and runs, exactly once, off the request path.

One transaction per batch unpacks pending deliveries into alert rows (dedupe), reads pending alerts,
assigns incidents, matches runbooks, creates runs (subject to the storm rate limits), records throttles,
and clears the pending markers. A crash anywhere before the commit leaves deliveries and alerts pending,
so the next start picks them up again; after the commit they are done.

A batch is bounded whatever the senders do: at most `alertmanager_batch_size` alerts are unpacked (a slice of
a big notification, whose body is parsed before the transaction) and as many matched, so the write gate
that webhook commits wait on is held for one slice at a time.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, select, text

from runbot import tracing
from runbot.adapters.alertmanager import incidents
from runbot.adapters.alertmanager.ingest import DELIVERIES, Backlog, WriteGate
from runbot.adapters.alertmanager.payload import template_alert
from runbot.adapters.alertmanager.ratelimit import RunRateLimiter
from runbot.adapters.alertmanager.tenants import RunbookScope
from runbot.adapters.alertmanager.unpack import Unpacked, Unpacker, prune_deliveries
from runbot.audit.log import Event, append
from runbot.engine.control import CommandError
from runbot.runbooks.loader import LoadedRunbook
from runbot.runbooks.match import Matcher
from runbot.store import tables
from runbot.store.raw import Raw
from runbot.store.types import utcnow
from runbot.worker import WorkerThread

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.intake")
ALERTS = tables.Alert.__table__  # type: ignore[attr-defined]
PG_INTAKE_LOCK = 0x72756E626F74  # "runbot": serializes intake batches across replicas
REQUESTER = "alertmanager"
WORK_COLUMNS = ("id", "fingerprint", "starts_at", "ends_at", "status", "labels", "annotations", "generator_url",
                "incident_id", "matched", "group_key", "group_labels", "note", "receiver", "extras")  # what matching reads
MIN_BATCH = 10  # alerts matched per transaction even when a webhook commit is waiting
BACKOFF, MAX_BACKOFF = 2.0, 0.05


@dataclass
class BatchReport:
    unpacked: Unpacked = field(default_factory=Unpacked)
    alerts: int = 0
    runs: list[tuple[str, str]] = field(default_factory=list)  # (runbook, run id)
    unhandled: int = 0
    throttled: Counter[str] = field(default_factory=Counter)  # runbook -> alerts
    incidents_opened: int = 0
    incidents_resolved: int = 0
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (receiver, runbook) -> alerts


class IntakeProcessor(WorkerThread):
    thread_name = "runbot-intake"

    def __init__(self, rt: Runtime, gate: WriteGate | None = None, backlog: Backlog | None = None) -> None:
        super().__init__()
        self.rt = rt
        self.gate = gate or WriteGate()
        self.backlog = backlog or Backlog()
        self._pruned_to = 0  # processed deliveries up to this id are forgotten
        self.settings = rt.settings
        self.limiter = RunRateLimiter(rt.settings)
        self.scope = RunbookScope(rt.settings.alertmanager_receiver_runbooks)
        self.unpacker = Unpacker()  # keeps a big notification's parsed body between its slices
        self.batches = 0
        # While the webhook is busy, matching takes at most ~1/(1+BACKOFF) of the time: acknowledgements first,
        # the backlog is durable and catches up when the burst is over.
        self.webhook_busy: Callable[[], bool] = lambda: False
        self._matchers: dict[str, list[Matcher]] = {}  # runbook version -> parsed matchers

    # ---- the worker thread ---------------------------------------------------------------------------------

    def notify(self) -> None:
        """Thread-safe: new alerts were committed."""
        self.wake()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self.settings.poll_interval)
            self._wake.clear()
            try:
                self.drain()
            except Exception as exc:  # the alerts stay pending; try again after a pause
                with contextlib.suppress(Exception):  # not even a broken log stream may end this thread
                    log.error("intake batch failed; the alerts stay pending and are retried", error=repr(exc))
                self._stop.wait(1.0)

    def drain(self) -> int:
        """Process pending alerts until none is left (or stop); returns how many were processed."""
        total = 0
        while not self._stop.is_set():
            started = time.monotonic()
            report = self.process_batch()
            if report.alerts == 0 and report.unpacked.deliveries == 0 and report.unpacked.alerts == 0:
                break
            total += report.alerts
            if self.webhook_busy():
                self._stop.wait(min(MAX_BACKOFF, BACKOFF * (time.monotonic() - started)))
        return total

    # ---- one batch -------------------------------------------------------------------------------------------

    def process_batch(self) -> BatchReport:
        report = BatchReport()
        size = self.settings.alertmanager_batch_size
        self.unpacker.prepare(self.rt.db, size)  # parse bodies now, not while holding the gate
        now = utcnow()
        with self.gate.background(), self.rt.db.tx() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_INTAKE_LOCK})
            report.unpacked = self.unpacker.unpack(conn, now, size)
            self._prune(conn, report.unpacked)
            q = (select(*[ALERTS.c[c] for c in WORK_COLUMNS]).where(ALERTS.c.pending_since.is_not(None))
                 .order_by(ALERTS.c.pending_since, ALERTS.c.received_at).limit(self.settings.alertmanager_batch_size))  # fmt: skip
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            rows = [dict(r) for r in conn.execute(q).mappings()]
            if rows:
                self._match(conn, rows, now, report)
        self.batches += 1
        try:
            self._after_commit(report)
        except Exception as exc:  # committed is committed: bookkeeping problems must not look like a failed batch
            with contextlib.suppress(Exception):
                log.warning("intake bookkeeping failed after commit", error=repr(exc))
        return report

    def _match(self, conn: Connection, rows: list[dict[str, Any]], now: datetime, report: BatchReport) -> None:
        engine = self.rt.engine
        touched = incidents.Touched()
        buckets = self.limiter.load(conn)
        throttle_rows: list[dict[str, Any]] = []
        updates = []
        for n, row in enumerate(rows):
            if n >= MIN_BATCH and self.gate.urgent_waiting():
                break  # a webhook commit waits: finish with what is done, the rest stays pending
            if row["status"] == "firing":
                self._firing(conn, row, now, touched, buckets, throttle_rows, report)
            else:
                self._resolved(conn, row, now, touched)
            updates.append({"id": row["id"], "inc": row["incident_id"], "matched": row["matched"],
                            "note": row["note"]})  # fmt: skip
        report.alerts = len(updates)
        raw = Raw(conn)  # the same transaction, without SQLAlchemy's per-row parameter building
        raw.executemany("UPDATE alerts SET incident_id = :inc, matched = :matched, note = :note, "
                        "pending_since = NULL WHERE id = :id", updates)  # fmt: skip
        for inc_id in sorted(touched.to_check):
            if incidents.resolve_if_done(conn, engine, inc_id, now, touched):
                report.incidents_resolved += 1
        if throttle_rows:
            raw.insert_many("alert_throttles", throttle_rows)
        self.limiter.save(conn, buckets, now)
        report.incidents_opened = sum(1 for e in touched.events if e.action == "incident.opened")
        events = touched.events + self._throttle_events(throttle_rows, now) + self._refusal_events(report, now)
        if events:
            append(conn, events)

    def _prune(self, conn: Connection, unpacked: Unpacked) -> None:
        """Now and then (every ~1000 deliveries), forget processed ones beyond the newest `alertmanager_deliveries_keep`."""
        keep = self.settings.alertmanager_deliveries_keep
        cut = unpacked.last_id - keep
        if cut - self._pruned_to >= max(1, min(1000, keep)):
            prune_deliveries(conn, cut)
            self._pruned_to = cut

    def _firing(self, conn: Connection, row: dict[str, Any], now: datetime, touched: incidents.Touched,
                buckets: dict[str, Any], throttle_rows: list[dict[str, Any]], report: BatchReport) -> None:  # fmt: skip
        row["incident_id"] = row["incident_id"] or incidents.incident_for(
            conn, row, now, self.settings.alertmanager_flap_seconds, touched)
        if row["matched"] is not None:
            return
        books = self._matching(row["labels"] or {})
        if not books:
            row["matched"], row["note"] = False, "unhandled: no runbook matches"
            report.unhandled += 1
            return
        receiver = row["receiver"] or ""
        notes = []
        allowed = [b for b in books if self.scope.may_start(receiver, b.name)]
        names = {b.name for b in allowed}
        for book in books:
            if book.name not in names:
                report.refused[(receiver, book.name)] += 1
                notes.append(f"{book.name}: not started: {self.scope.refusal(receiver, book.name)}")
        if not allowed:
            row["matched"], row["note"] = False, ("unhandled: " + "; ".join(notes))[:2000]
            report.unhandled += 1
            return
        alert = template_alert(row["status"], row["labels"], row["annotations"], row["starts_at"], row["ends_at"],
                               row["generator_url"], row["fingerprint"], row["extras"])  # fmt: skip
        for book in allowed:
            refused = self.limiter.take(buckets, book.name, now)
            if refused is not None:
                throttle_rows.append({"alert_id": row["id"], "runbook_name": book.name, "scope": refused,
                                      "incident_id": row["incident_id"], "at": now})  # fmt: skip
                report.throttled[book.name] += 1
                notes.append(f"{book.name}: throttled ({refused} rate limit)")
                continue
            try:
                run_id = self.rt.engine.create_run(book, alert=alert, alert_id=row["id"], incident_id=row["incident_id"],
                                                   requester=REQUESTER, conn=conn)  # fmt: skip
            except CommandError as exc:
                notes.append(f"{book.name}: not started: {exc}")
                log.warning("matching runbook refused the alert", runbook=book.name, alert_id=row["id"], error=str(exc))
                continue
            report.runs.append((book.name, run_id))
            notes.append(f"{book.name}: run {run_id}")
        row["matched"], row["note"] = True, "; ".join(notes)[:2000]

    def _matching(self, labels: dict[str, Any]) -> list[LoadedRunbook]:
        """Catalog.matching, with each runbook's matchers parsed once per version rather than per alert."""
        text_labels = {k: str(v) for k, v in labels.items()}
        out = []
        for book in self.rt.catalog.all():
            matchers = self._matchers.get(book.version_hash)
            if matchers is None:
                matchers = self._matchers[book.version_hash] = book.spec.matchers()
            if matchers and all(m.matches(text_labels) for m in matchers):
                out.append(book)
        return out

    def _resolved(self, conn: Connection, row: dict[str, Any], now: datetime, touched: incidents.Touched) -> None:
        if row["matched"] is None:  # never matched while firing: it is over, so nothing is started for it
            row["matched"] = False
            row["note"] = "resolved before runbot matched it: no run started"
            others = incidents.owners_elsewhere(conn, row) if row["incident_id"] is None else []
            if others:
                self._foreign_resolution(row, others, now, touched)
        if row["incident_id"] is None:  # recorded in its group's incident all the same (which then resolves)
            row["incident_id"] = incidents.incident_for(conn, row, now, 0.0, touched)
        touched.to_check.add(row["incident_id"])

    def _foreign_resolution(self, row: dict[str, Any], others: list[dict[str, Any]], now: datetime,
                            touched: incidents.Touched) -> None:  # fmt: skip
        """A resolution for an alert this receiver never reported firing, while other receivers hold it:
        it resolves nothing of theirs. Said on the alert and in the audit trail, with the owners' incidents."""
        receiver = row["receiver"] or ""
        owners = sorted({o["receiver"] for o in others})
        reason = (f"receiver {receiver!r} sent 'resolved' for an alert it never reported firing; the same fingerprint "
                  f"and startsAt belong to receiver(s) {', '.join(map(repr, owners))}, and an alert is resolved only by "
                  "the receiver that sent it: their alerts and incidents are untouched")  # fmt: skip
        row["note"] = f"resolved before runbot matched it: no run started; {reason}"[:2000]
        for o in others:
            touched.events.append(Event(
                "intake.foreign_resolution_ignored", actor=f"alertmanager:{receiver}", incident_id=o["incident_id"],
                outcome="ignored", details={"receiver": receiver, "owner": o["receiver"], "owner_status": o["status"],
                                            "alert_id": row["id"], "fingerprint": row["fingerprint"],
                                            "starts_at": row["starts_at"].isoformat(), "reason": reason}))  # fmt: skip
        log.warning("a receiver's resolution for another receiver's alert was ignored", receiver=receiver,
                    owners=owners, fingerprint=row["fingerprint"], alert_id=row["id"])  # fmt: skip

    def _refusal_events(self, report: BatchReport, now: datetime) -> list[Event]:
        return [Event("intake.receiver_refused", actor=f"alertmanager:{receiver}", runbook=book, outcome="refused",
                      details={"receiver": receiver, "alerts": n, "at": now.isoformat(),
                               "reason": self.scope.refusal(receiver, book)})
                for (receiver, book), n in sorted(report.refused.items())]  # fmt: skip

    def _throttle_events(self, throttle_rows: list[dict[str, Any]], now: datetime) -> list[Event]:
        per_book: dict[str, list[dict[str, Any]]] = {}
        for t in throttle_rows:
            per_book.setdefault(t["runbook_name"], []).append(t)
        return [Event("intake.throttled", actor="alertmanager", runbook=book, outcome="throttled",
                      details={"alerts": len(ts), "scopes": dict(Counter(t["scope"] for t in ts)),
                               "first_alert_id": ts[0]["alert_id"], "at": now.isoformat()})
                for book, ts in sorted(per_book.items())]  # fmt: skip

    def _after_commit(self, report: BatchReport) -> None:
        if report.runs:
            self.rt.engine.wake()
        m = self.rt.metrics
        if report.unpacked.deliveries:
            log.info("alerts received", deliveries=report.unpacked.deliveries, new=report.unpacked.new,
                     deduplicated=report.unpacked.duplicates, runs=len(report.runs))  # fmt: skip
            self.backlog.take(report.unpacked.alerts)
            if report.unpacked.duplicates:
                m.alerts_deduplicated.inc(report.unpacked.duplicates)
        if report.unhandled:
            m.alerts_unhandled.inc(report.unhandled)
        for book, _ in report.runs:
            m.runs_created.labels(runbook=book).inc()
        tracing.TRACER.delivery([run_id for _, run_id in report.runs], report.alerts)  # linked to its runs
        for book, n in sorted(report.throttled.items()):
            m.alerts_throttled.labels(runbook=book).inc(n)
            log.warning("alert storm: new runs throttled", runbook=book, alerts=n)


def wait_idle(processor: IntakeProcessor, db: Any, timeout: float = 10.0) -> bool:
    """Until no delivery or alert is pending (tests and the CLI use it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not busy(db):
            return True
        processor.notify()
        time.sleep(0.02)
    return False


def busy(db: Any) -> bool:
    """Some accepted delivery is not unpacked yet, or some alert is not matched yet."""
    with db.read() as conn:
        if conn.execute(select(DELIVERIES.c.id).where(DELIVERIES.c.processed_at.is_(None)).limit(1)).first():
            return True
        return conn.execute(select(ALERTS.c.id).where(ALERTS.c.pending_since.is_not(None)).limit(1)).first() is not None
