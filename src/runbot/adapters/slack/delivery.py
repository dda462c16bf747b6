"""The outbox worker: turns outbox rows into Slack posts and in-place updates, surviving Slack trouble.

Rows are handled per run. Every pass re-renders the run's messages from the database, so an update
after a restart lands on the stored message (`slack_messages`) with the newest state. Each post is
recorded under a stable key right after it succeeds and skipped when the key exists, so retrying a group
never posts twice.

Slack's limits are respected per method and channel (see pacing): a call that would exceed them, or that
got a 429, defers only its own run's rows (to when its method/channel is free again) and the pass goes on
with the other runs. Runs with approval requests, escalations, decisions or a first message go first;
inside a run the approval comes before the step results; step results due together are merged into one
reply; in-place updates of a live root are paced (latest state wins). 5xx and network errors back off
exponentially; nothing is dropped for them. Only errors Slack will never accept (channel_not_found ...)
are dropped after `slack_max_attempts`, and an approval request Slack refuses is recorded (audit, metric,
`runbot runs show`) and posted again as a minimal plain-text request.

The worker is woken by the engine's commit of a row (in this process) and polls for other processes' rows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select, update

from runbot.adapters.slack import blocks as B
from runbot.adapters.slack import escape as E
from runbot.adapters.slack.authz import Authorizer, Directory, DirectoryError
from runbot.adapters.slack.metrics import slack_metrics
from runbot.adapters.slack.pacing import NORMAL, PROGRESS, URGENT, PaceConfig, Pacer
from runbot.adapters.slack.routing import channel_for, incident_channel_name, runbook_url
from runbot.adapters.slack.runview import RunView, load_run_view
from runbot.adapters.slack.slackapi import classify, slack_error
from runbot.adapters.slack.store import Ref, SlackStore
from runbot.audit import log as audit
from runbot.domain import LIVE_RUN
from runbot.engine.state import APPROVALS, ARTIFACTS, INCIDENTS, OUTBOX, RUNS
from runbot.observability import instrument_slack
from runbot.store.types import utcnow
from runbot.worker import WorkerThread

if TYPE_CHECKING:
    from runbot.app import Runtime

log = structlog.get_logger("runbot.slack.delivery")
CLAIM_SECONDS = 30.0  # a row being delivered is invisible to other workers this long (and after a crash)
PRUNE_EVERY = 600.0
UNUPDATABLE = frozenset({"message_not_found", "cant_update_message", "is_archived", "channel_not_found"})
GONE = "gone"
QUIET_TOPICS = frozenset({"run.started", "step.started", "step.waiting", "run.waiting", "approval.voted"})
URGENT_TOPICS = frozenset({"approval.requested", "approval.escalated", "approval.voted", "run.started"})
REFUSED = frozenset({"invalid_blocks", "msg_too_long", "msg_blocks_too_long", "invalid_arguments",
                     "invalid_blocks_format", "too_many_attachments"})  # fmt: skip
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "aborted", "skipped"})
STORM_ACTIONABLE = frozenset({"approval.requested", "approval.escalated", "approval.voted", "step.in_doubt",
                              "step.held"})  # what a storm run still posts or updates  # fmt: skip
MERGE_BUDGET = 6000  # block text per merged step-results reply
MERGE_MAX = 10  # step results per merged reply
OUTPUT_INLINE = 1500  # longer outputs go to the thread as a file


class _Taken(Exception):
    """Another worker claimed part of the group first (rolls the claim back)."""


class NoChannel(Exception):
    """No channel is configured for this run: nothing can be delivered."""


class Deferred(Exception):
    """Slack's limits say "not now" for a call this group needs: try the group again in `wait` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"deferred {wait:.2f}s")
        self.wait = wait


@dataclass
class Row:
    id: int
    topic: str
    run_id: str | None
    payload: dict[str, Any]
    attempts: int


class Delivery(WorkerThread):
    thread_name = "runbot-slack-outbox"

    def __init__(self, rt: Runtime, client: WebClient, directory: Directory, authorizer: Authorizer,
                 store: SlackStore) -> None:  # fmt: skip
        super().__init__()
        self.rt = rt
        self.settings = rt.settings
        self.client = instrument_slack(client)  # Slack API errors and 429s by method (runbot.observability)
        self.directory = directory
        self.authorizer = authorizer
        self.store = store
        s = self.settings
        self.pacer = Pacer(PaceConfig(scale=s.slack_rate_scale, update_interval=s.slack_update_interval))
        self.metrics = slack_metrics(rt.metrics.registry)
        self._later: dict[str, float] = {}  # run id -> monotonic time its paced root update is due
        self._later_summary: dict[str, float] = {}  # incident id -> when its summary is to be brought up to date
        self._storm_rank: dict[str, int] = {}  # run id -> runs of its incident created before it
        self._channel_ids: dict[str, str] = {}  # channel as configured ("#ops") -> its id, as Slack answered
        self._storm_incident: dict[str, str] = {}  # run id -> incident, for runs shown only in a summary
        self._last_prune = 0.0
        self._flush_until = 0.0  # monotonic; set by stop()

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.deliver_due()
                self.refresh_due()
                self.refresh_summaries()
                if time.monotonic() - self._last_prune > PRUNE_EVERY:
                    self._last_prune = time.monotonic()
                    self.store.prune_seen()
            except Exception as exc:  # a database hiccup: try again next tick
                log.error("outbox pass failed", error=f"{type(exc).__name__}: {exc}")
            wait = self.settings.slack_outbox_poll
            due = [*self._later.values(), *self._later_summary.values()]
            if due:
                wait = max(0.005, min(wait, min(due) - time.monotonic()))
            self._wake.wait(wait)
        self._flush_on_shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        """Shutdown: what the drained engine queued last is still delivered, for shutdown_flush_seconds at most
        (what is left waits in the outbox for another replica)."""
        self._flush_until = time.monotonic() + self.settings.shutdown_flush_seconds
        super().stop(timeout=max(timeout, self.settings.shutdown_flush_seconds + 1))

    def _flush_on_shutdown(self) -> None:
        while time.monotonic() < self._flush_until:
            try:
                if not self.deliver_due():
                    return
            except Exception as exc:
                log.warning("outbox flush on shutdown failed", error=f"{type(exc).__name__}: {exc}")
                return

    # ---- calls to Slack, within its limits ------------------------------------------------------------------

    def _api(self, method: str, channel: str | None, priority: int, fn: Any, /, **kw: Any) -> Any:
        wait = self.pacer.acquire(method, channel, priority)
        if wait > 0:
            raise Deferred(wait)
        try:
            return fn(**kw)
        except SlackApiError as exc:
            trouble = classify(exc)
            if "rate limited" in trouble.reason:  # counted by observability.instrument_slack
                raise Deferred(self.pacer.limited_by_slack(method, channel, trouble.retry_after)) from None
            raise

    def _post(self, priority: int, **kw: Any) -> Any:
        named = str(kw.get("channel") or "")
        channel = self._channel_ids.get(named, named)  # "#ops" and "C0OPS" share one allowance
        resp = self._api("chat.postMessage", channel, priority, self.client.chat_postMessage,
                         unfurl_links=False, unfurl_media=False, **kw)  # fmt: skip
        with contextlib.suppress(Exception):
            if resp["channel"] != named and len(self._channel_ids) < 10_000:
                self._channel_ids[named] = str(resp["channel"])
        return resp

    # ---- one pass -------------------------------------------------------------------------------------------

    def deliver_due(self, limit: int = 500) -> int:
        """Deliver what is due now, most urgent runs first; returns the number of rows delivered."""
        now = utcnow()
        with self.rt.db.read() as conn:  # urgent rows are read apart: a backlog of progress never hides them
            urgent = conn.execute(select(OUTBOX).where(OUTBOX.c.delivered_at.is_(None),
                                                       OUTBOX.c.topic.in_(sorted(URGENT_TOPICS)))
                                  .order_by(OUTBOX.c.id).limit(limit)).mappings().all()  # fmt: skip
            oldest = conn.execute(select(OUTBOX).where(OUTBOX.c.delivered_at.is_(None))
                                  .order_by(OUTBOX.c.id).limit(limit)).mappings().all()  # fmt: skip
        rows = sorted({r["id"]: r for r in [*oldest, *urgent]}.values(), key=lambda r: r["id"])
        groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        for r in rows:
            groups.setdefault(r["run_id"] or f"row:{r['id']}", []).append(dict(r))
        order = sorted(groups.items(), key=lambda kv: (min(_priority(g["topic"]) for g in kv[1]), kv[1][0]["id"]))
        delivered = 0
        for key, group in order:
            if self._stop.is_set():
                break
            if group[0]["next_attempt_at"] > now or not self._claim(group, now):
                continue  # head of the run's queue is backing off (or another worker has it): keep order
            batch = [Row(g["id"], g["topic"], g["run_id"], g["payload"] or {}, g["attempts"]) for g in group]
            try:
                if key.startswith("row:"):
                    self._deliver_global(batch[0])
                else:
                    self._deliver_run(key, batch)
            except NoChannel as exc:
                self._done(batch, error=f"not delivered: {exc}")
                self._count("dropped", len(batch))
                continue
            except Deferred as exc:
                self._defer(batch, exc.wait)
                continue
            except Exception as exc:
                self._retry(batch, exc)
                continue
            self._done(batch)
            delivered += len(batch)
            self._count("delivered", len(batch))
        return delivered

    def _claim(self, group: list[dict[str, Any]], now: Any) -> bool:
        ids = [g["id"] for g in group]
        try:
            with self.rt.db.tx() as conn:
                n = conn.execute(update(OUTBOX).where(OUTBOX.c.id.in_(ids), OUTBOX.c.delivered_at.is_(None),
                                                      OUTBOX.c.next_attempt_at <= now)
                                 .values(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))).rowcount  # fmt: skip
                if n != len(ids):
                    raise _Taken
        except _Taken:
            return False
        return True

    def _done(self, batch: list[Row], error: str | None = None) -> None:
        with self.rt.db.tx() as conn:
            conn.execute(update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in batch])).values(
                delivered_at=utcnow(), attempts=OUTBOX.c.attempts + 1, last_error=error))  # fmt: skip

    def _defer(self, batch: list[Row], wait: float) -> None:
        """Not a failure: the same rows again once Slack's limits allow (attempts unchanged)."""
        with self.rt.db.tx() as conn:
            conn.execute(update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in batch])).values(
                next_attempt_at=utcnow() + timedelta(seconds=wait)))  # fmt: skip
        self._count("deferred", len(batch))

    def _retry(self, batch: list[Row], exc: BaseException) -> None:
        trouble = classify(exc)
        attempts = max(r.attempts for r in batch) + 1
        if not trouble.transient and attempts >= self.settings.slack_max_attempts:
            log.error("Slack refused a message for good; dropping it", run_id=batch[0].run_id,
                      topics=[r.topic for r in batch], error=trouble.reason)  # fmt: skip
            self._done(batch, error=f"dropped after {attempts} attempts: {trouble.reason}")
            self._count("dropped", len(batch))
            return
        if trouble.retry_after is not None:
            delay = trouble.retry_after
        else:
            delay = min(self.settings.slack_retry_max, 2.0 ** min(attempts - 1, 20)) * random.uniform(0.5, 1.0)
        log.warning("Slack delivery will be retried", run_id=batch[0].run_id, attempt=attempts,
                    in_seconds=round(delay, 2), error=trouble.reason)  # fmt: skip
        with self.rt.db.tx() as conn:
            conn.execute(update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in batch])).values(
                attempts=attempts, next_attempt_at=utcnow() + timedelta(seconds=delay),
                last_error=trouble.reason[:1000]))  # fmt: skip
        self._count("retry", len(batch))

    def _count(self, outcome: str, n: int) -> None:
        with contextlib.suppress(Exception):  # metrics never break delivery
            self.rt.metrics.slack_deliveries.labels(outcome=outcome).inc(n)

    # ---- a run's messages ---------------------------------------------------------------------------------------

    def _deliver_run(self, run_id: str, batch: list[Row]) -> None:
        inc = self._storm_incident.get(run_id)
        if inc is not None and not any(r.topic in STORM_ACTIONABLE for r in batch):
            self._summary_due(inc)  # a storm run's progress: only its incident's summary changes
            return
        view = load_run_view(self.rt, run_id)
        if view is None:
            return
        with E.for_run(run_id, view.run["status"] in {s.value for s in LIVE_RUN}):
            if self._in_storm(view):
                self._deliver_storm_run(view, batch)
                return
            root = self._ensure_root(view)
            replies: list[tuple[str, B.Message]] = []
            files: list[Callable[[], None]] = []
            for row in sorted(batch, key=lambda r: (_priority(r.topic), r.id)):  # approvals before step results
                if row.topic in ("step.succeeded", "step.failed"):
                    got, later = self._step_replies(view, root, str(row.payload.get("step_id") or ""))
                    replies += got
                    files += later
                else:
                    self._flush(root, replies, files)
                    replies, files = [], []
                    self._handle(view, root, row)
            self._flush(root, replies, files)
            self.refresh(view, root)

    # ---- storms: an incident with many runs gets one summary, not a thread per run --------------------------

    def _in_storm(self, view: RunView) -> bool:
        """True for a run of an incident beyond its first `slack_storm_threads` runs (and without a root)."""
        inc = view.run.get("incident_id")
        if not inc:
            return False
        known = self._storm_rank.get(view.id)
        if known is None:
            if self.store.ref(f"{view.id}:root") is not None:
                known = 0
            else:
                with self.rt.db.read() as conn:
                    known = int(conn.execute(select(func.count()).select_from(RUNS).where(
                        RUNS.c.incident_id == inc, RUNS.c.created_at < view.run["created_at"])).scalar_one())  # fmt: skip
            if len(self._storm_rank) > 100_000:
                self._storm_rank.clear()
                self._storm_incident.clear()
            self._storm_rank[view.id] = known
        return known >= self.settings.slack_storm_threads

    def _deliver_storm_run(self, view: RunView, batch: list[Row]) -> None:
        """Only what people must act on gets a message (in the summary's thread); the summary shows the rest."""
        inc = str(view.run["incident_id"])
        summary = self._ensure_summary(inc)
        for row in sorted(batch, key=lambda r: (_priority(r.topic), r.id)):
            if row.topic in ("approval.requested", "approval.escalated", "step.in_doubt", "step.held"):
                self._handle(view, summary, row)
        self.refresh(view)  # its approval messages (decisions)
        self._storm_incident[view.id] = inc
        self._summary_due(inc)

    def _summary_due(self, inc: str) -> None:
        due = time.monotonic() + self.pacer.update_due(f"incident:{inc}:summary")
        self._later_summary[inc] = min(self._later_summary.get(inc, float("inf")), due)

    def _ensure_summary(self, incident_id: str) -> Ref:
        key = f"incident:{incident_id}:summary"
        ref = self.store.ref(key)
        if ref is not None:
            return ref
        with self.rt.db.read() as conn:
            first = conn.execute(select(RUNS.c.id).where(RUNS.c.incident_id == incident_id)
                                 .order_by(RUNS.c.created_at).limit(1)).scalar_one()  # fmt: skip
        view = load_run_view(self.rt, str(first))
        channel = channel_for(self.settings, view) if view is not None else self.settings.slack_default_channel
        if not channel:
            raise NoChannel("no Slack channel for this incident")
        msg = self._summary_message(incident_id)
        resp = self._post(URGENT, channel=channel, text=msg.text, blocks=msg.blocks)
        ref = Ref(key, "summary", resp["channel"], resp["ts"], None, msg.digest(), None)
        self.store.save(ref)
        self.pacer.updated(key)
        return ref

    def _summary_message(self, incident_id: str) -> B.Message:
        with self.rt.db.read() as conn:
            inc = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == incident_id)).mappings().first()
            runs = [dict(r) for r in conn.execute(select(RUNS.c.id, RUNS.c.status, RUNS.c.runbook_name)
                                                  .where(RUNS.c.incident_id == incident_id)
                                                  .order_by(RUNS.c.created_at)).mappings()]  # fmt: skip
            pending = int(conn.execute(select(func.count()).select_from(APPROVALS).where(
                APPROVALS.c.run_id.in_([r["id"] for r in runs]), APPROVALS.c.status == "pending")).scalar_one())  # fmt: skip
        return B.incident_summary(dict(inc) if inc else {"id": incident_id}, runs, pending,
                                  self.settings.slack_storm_threads)  # fmt: skip

    def refresh_summaries(self) -> None:
        now = time.monotonic()
        for inc in [i for i, at in self._later_summary.items() if at <= now]:
            self._later_summary.pop(inc, None)
            key = f"incident:{inc}:summary"
            due = self.pacer.update_due(key)
            ref = self.store.ref(key)
            if ref is None or ref.ts is None:
                continue
            if due > 0:
                self._later_summary[inc] = now + due
                continue
            msg = self._summary_message(inc)
            if msg.digest() == ref.rendered_hash:
                continue
            try:
                self._api("chat.update", ref.channel, PROGRESS, self.client.chat_update, channel=ref.channel,
                          ts=ref.ts, text=msg.text, blocks=msg.blocks)  # fmt: skip
            except Deferred as exc:
                self._later_summary[inc] = time.monotonic() + exc.wait
                continue
            except Exception as exc:
                log.warning("incident summary update failed", incident_id=inc, error=f"{type(exc).__name__}: {exc}")
                continue
            self.pacer.updated(key)
            self.store.set_hash(key, msg.digest())

    def _flush(self, root: Ref, replies: list[tuple[str, B.Message]], files: list[Callable[[], None]]) -> None:
        """Step results due together: one reply per MERGE_MAX (within MERGE_BUDGET), not one each, so a
        fast run spends the channel's allowance on few messages. Every result's key points at its reply."""
        todo = [(k, m) for k, m in dict(replies).items() if self.store.ref(k) is None]
        chunk: list[tuple[str, B.Message]] = []
        size = 0
        for key, msg in [*todo, ("", B.Message("", []))]:
            n = B.Z.block_text_length(msg.blocks)
            if chunk and (not key or len(chunk) >= MERGE_MAX or size + n > MERGE_BUDGET):
                keys = [k for k, _ in chunk]
                if len(chunk) == 1:
                    merged = chunk[0][1]
                else:
                    blocks = [b for _, m in chunk for b in m.blocks]
                    merged = B.Message(f"{len(chunk)} step results: " + " · ".join(m.text for _, m in chunk), blocks)
                ref = self._reply(root, keys[0], merged, priority=NORMAL)
                for k in keys[1:]:
                    self.store.save(Ref(k, ref.kind, ref.channel, ref.ts, ref.thread_ts, ref.rendered_hash, ref.run_id))
                chunk, size = [], 0
            if key:
                chunk.append((key, msg))
                size += n
        for upload in files:  # after the results they belong to
            upload()

    def _ensure_root(self, view: RunView) -> Ref:
        key = f"{view.id}:root"
        ref = self.store.ref(key)
        if ref is None:
            channel = channel_for(self.settings, view)
            if not channel:
                raise NoChannel("no Slack channel for this run (set RUNBOT_SLACK_DEFAULT_CHANNEL)")
            msg = B.incident_message(view, runbook_url(self.settings, view))
            resp = self._post(URGENT, channel=channel, text=msg.text, blocks=msg.blocks)
            ref = Ref(key, "root", resp["channel"], resp["ts"], None, msg.digest(), view.id)
            self.store.save(ref)
            self.pacer.updated(key)
        if self.settings.slack_incident_channels:
            self._ensure_incident_channel(view)
        return ref

    def _ensure_incident_channel(self, view: RunView) -> None:
        ikey = f"incident:{(view.incident or {}).get('id') or view.id}:channel"
        chan = self.store.ref(ikey)
        if chan is None:
            name = incident_channel_name(self.settings, view)
            try:
                resp = self._api("conversations.create", None, URGENT, self.client.conversations_create, name=name)
            except SlackApiError as exc:
                if slack_error(exc) != "name_taken":
                    raise
                resp = self._api("conversations.create", None, URGENT, self.client.conversations_create,
                                 name=f"{name[:74]}-{random.randrange(16**4):04x}")  # fmt: skip
            chan = Ref(ikey, "incident_channel", resp["channel"]["id"], None, None, None, view.id)
            self.store.save(chan)
            users = self._owners(view)
            if users:
                self._api("conversations.invite", None, URGENT, self.client.conversations_invite, channel=chan.channel,
                          users=",".join(sorted(users)[:1000]))  # fmt: skip
        rkey = f"{view.id}:incident_root"
        if self.store.ref(rkey) is None:
            msg = B.incident_message(view, runbook_url(self.settings, view))
            resp = self._post(URGENT, channel=chan.channel, text=msg.text, blocks=msg.blocks)
            self.store.save(Ref(rkey, "incident_root", resp["channel"], resp["ts"], None, msg.digest(), view.id))

    def _owners(self, view: RunView) -> set[str]:
        """People invited to an incident channel: configured users/groups plus the runbook's approvers."""
        refs = list(self.settings.slack_incident_channel_invite)
        labels = view.labels
        if view.book is not None:
            for step in view.book.spec.all_steps():
                if step.approval is not None:
                    a = step.approval.approvers
                    refs += a.slack_users + a.slack_usergroups
                    # a label value names groups only through the configured table, never by itself: a hostile
                    # label must not choose who is invited (the same rule as for approving)
                    table = self.settings.approval_label_groups
                    refs += [g for lbl in a.from_labels for g in table.get(str(labels.get(lbl) or ""), [])]
        users: set[str] = set()
        for ref in dict.fromkeys(refs):
            r = ref.removeprefix("slack:")
            if E.is_user_id(r):
                users.add(r)
                continue
            try:
                gid = self.directory.group_id(r)
                if gid:
                    users |= self.directory.members(gid)
            except DirectoryError as exc:
                log.warning("could not resolve a user group for the incident channel", group=r, error=str(exc))
        return users

    def _handle(self, view: RunView, root: Ref, row: Row) -> None:
        topic = row.topic
        if topic in QUIET_TOPICS:
            return  # the refresh shows it
        sid = str(row.payload.get("step_id") or "")
        if topic in ("step.succeeded", "step.failed"):
            self._flush(root, *self._step_replies(view, root, sid))
        elif topic == "step.held":
            self._reply(root, f"{view.id}:reply:row{row.id}", B.held_reply(sid, str(row.payload.get("reason") or "")))
        elif topic == "step.in_doubt":
            self._reply(root, f"{view.id}:reply:row{row.id}",
                        B.in_doubt_reply(view.id, sid, str(row.payload.get("message") or "")))  # fmt: skip
        elif topic == "approval.requested":
            self._post_approval(view, root, str(row.payload.get("approval_id") or ""))
        elif topic == "approval.escalated":
            self._post_escalation(view, root, row, str(row.payload.get("approval_id") or ""))
        elif topic == "run.finished":
            self._reply(root, f"{view.id}:reply:row{row.id}", B.finished_reply(view))

    def _reply(self, root: Ref, key: str, msg: B.Message, *, broadcast: bool = False, kind: str = "reply",
               approval_id: str | None = None, priority: int = NORMAL, run_id: str | None = None) -> Ref:  # fmt: skip
        ref = self.store.ref(key)
        if ref is not None:
            return ref
        resp = self._post(priority, channel=root.channel, thread_ts=root.ts, text=msg.text, blocks=msg.blocks,
                          reply_broadcast=broadcast)  # fmt: skip
        ref = Ref(key, kind, resp["channel"], resp["ts"], root.ts, msg.digest(), run_id or root.run_id, approval_id)
        self.store.save(ref)
        return ref

    def _step_replies(self, view: RunView, root: Ref,
                      sid: str) -> tuple[list[tuple[str, B.Message]], list[Callable[[], None]]]:  # fmt: skip
        """The replies for a step's finished attempts (final failures only; retried ones show in the step
        list), returned for merging; outputs too long to show go to the thread as a file."""
        line = next((s for s in view.steps if s.step_id == sid), None)
        diagnostic = line is not None and not line.changes_things
        out: list[tuple[str, B.Message]] = []
        files: list[Callable[[], None]] = []
        for rec in view.journal.get(sid, []):
            status = rec["status"]
            if status not in ("succeeded", "failed") or (status == "failed" and rec.get("retry_at") is not None):
                continue
            if rec["step_type"] == "slack.message" and status == "succeeded":
                self._message_step(root, view.id, sid, rec)
                continue
            msg = B.step_result_reply(view, sid, rec["attempt"], show_output=diagnostic)
            if msg is not None:
                out.append((f"{view.id}:reply:{sid}:{rec['attempt']}:{status}", msg))
            output = rec.get("output")
            if diagnostic and status == "succeeded" and output:
                body = json.dumps(output, indent=1, sort_keys=True, ensure_ascii=False, default=str)
                if len(body) > OUTPUT_INLINE:
                    files.append(functools.partial(self._upload_text, root, f"{view.id}:output:{sid}:{rec['attempt']}",
                                                   E.redact(body), f"{sid}-output.json", f"{sid}: whole output"))  # fmt: skip
        for art in view.artifacts:
            if art["step_id"] == sid:
                files.append(functools.partial(self._upload, root, art))
        return out, files

    def _upload_text(self, root: Ref, key: str, text: str, filename: str, title: str) -> None:
        if self.store.ref(key) is not None:
            return
        resp = self._api("files.completeUploadExternal", None, NORMAL, self.client.files_upload_v2,
                         channel=root.channel, thread_ts=root.ts, content=text, filename=filename,
                         title=E.clip(title, 200))  # fmt: skip
        files = resp.get("files") or [{}]
        self.store.save(Ref(key, "file", root.channel, None, root.ts, str(files[0].get("id") or ""), root.run_id))

    def _message_step(self, root: Ref, run_id: str, sid: str, rec: dict[str, Any]) -> None:
        """A `slack.message` step: its text (escaped, already redacted) in the thread, and a channel if named."""
        out = rec.get("output") or {}
        msg = B.notice(E.esc(str(out.get("text") or "")))
        self._reply(root, f"{run_id}:reply:{sid}:{rec['attempt']}:message", msg, broadcast=bool(out.get("broadcast")))
        channel = out.get("channel")
        key = f"{run_id}:message:{sid}:{rec['attempt']}:{channel}"
        if channel and self.store.ref(key) is None:
            resp = self._post(NORMAL, channel=str(channel), text=msg.text, blocks=msg.blocks)
            self.store.save(Ref(key, "message", resp["channel"], resp["ts"], None, msg.digest(), root.run_id))

    def _upload(self, root: Ref, art: dict[str, Any]) -> None:
        key = f"{root.run_id}:file:{art['id']}"
        if self.store.ref(key) is not None:
            return
        with self.rt.db.read() as conn:
            data = conn.execute(select(ARTIFACTS.c.data).where(ARTIFACTS.c.id == art["id"])).scalar_one()
        title = f"{art['step_id']}: {art['name']}"
        resp = self._api("files.completeUploadExternal", None, NORMAL, self.client.files_upload_v2,
                         channel=root.channel, thread_ts=root.ts, file=bytes(data), filename=art["name"],
                         title=E.clip(title, 200))  # fmt: skip
        files = resp.get("files") or [{}]
        self.store.save(Ref(key, "file", root.channel, None, root.ts, str(files[0].get("id") or ""), root.run_id))

    def who(self, appr: dict[str, Any]) -> str:
        return self.directory.describe(self.authorizer.approvers(appr))

    def _post_approval(self, view: RunView, root: Ref, approval_id: str) -> None:
        appr = view.approval(approval_id)
        if appr is None:
            return
        msg = B.approval_message(view, appr, self.who(appr))
        key = f"{view.id}:approval:{approval_id}"
        try:
            fresh = self.store.ref(key) is None
            self._reply(root, key, msg, broadcast=True, kind="approval", approval_id=approval_id, priority=URGENT,
                        run_id=view.id)  # fmt: skip
            if fresh and appr.get("requested_at") is not None:
                with contextlib.suppress(Exception):
                    self.metrics.approval_delay.observe(max(0.0, (utcnow() - appr["requested_at"]).total_seconds()))
        except SlackApiError as exc:
            if slack_error(exc) not in REFUSED:
                raise
            self.record_refusal(view.id, f"approval request {approval_id} ({appr['step_id']})", slack_error(exc))
            fallback = B.approval_fallback(view, appr, self.settings.slack_command)
            self._reply(root, key, fallback, broadcast=True, kind="approval_text", approval_id=approval_id,
                        priority=URGENT, run_id=view.id)  # fmt: skip

    def record_refusal(self, run_id: str | None, what: str, error: str) -> None:
        """Slack refused a message for good: audited (shown by `runbot runs show`) and counted (alert on
        runbot_slack_refused_total), never only logged."""
        log.error("Slack refused a message", run_id=run_id, what=what, error=error)
        with contextlib.suppress(Exception):
            self.metrics.refused.labels(kind=what.split(" ")[0]).inc()
        try:
            with self.rt.db.tx() as conn:
                audit.append(conn, [audit.Event("slack.refused", actor="system", run_id=run_id, outcome="refused",
                                                details={"what": what, "error": error})])  # fmt: skip
        except Exception as exc:  # the metric and the log stand
            log.warning("could not audit a Slack refusal", error=type(exc).__name__)

    def _post_escalation(self, view: RunView, root: Ref, row: Row, approval_id: str) -> None:
        appr = view.approval(approval_id)
        if appr is None:
            return
        key = f"{view.id}:escalation:{approval_id}"
        policy = appr.get("policy") or {}
        target = policy.get("escalate_to") or {}
        channel = target.get("channel") or self.settings.slack_escalation_channel
        group = target.get("usergroup") or self.settings.slack_escalation_usergroup
        ping = self.directory.describe([str(group)]) if group else self.who(appr)
        msg = B.approval_message(view, appr, self.who(appr), escalation_ping=ping)
        if channel:
            if self.store.ref(key) is None:
                resp = self._post(URGENT, channel=channel, text=msg.text, blocks=msg.blocks)
                self.store.save(Ref(key, "escalation", resp["channel"], resp["ts"], None, msg.digest(), view.id,
                                    approval_id))  # fmt: skip
            where = E.channel(channel)
        else:
            self._reply(root, key, msg, broadcast=True, kind="escalation", approval_id=approval_id, priority=URGENT,
                        run_id=view.id)  # fmt: skip
            where = "this thread"
        self._reply(root, f"{view.id}:reply:row{row.id}",
                    B.notice(f":rotating_light: Approval for {E.code(appr['step_id'])} escalated to {where}; "
                             f"it now expires {E.date(appr['expires_at'])}."), priority=URGENT)  # fmt: skip

    def refresh_due(self) -> None:
        """The paced root updates whose time has come (latest state: the run is read again)."""
        now = time.monotonic()
        for run_id in [r for r, at in self._later.items() if at <= now]:
            self._later.pop(run_id, None)
            view = load_run_view(self.rt, run_id)
            if view is None:
                continue
            try:
                with E.for_run(run_id, view.run["status"] in {s.value for s in LIVE_RUN}):
                    self.refresh(view)
            except Deferred as exc:
                self._later[run_id] = time.monotonic() + exc.wait
            except Exception as exc:  # the next event of the run refreshes it again
                log.warning("paced update failed", run_id=run_id, error=f"{type(exc).__name__}: {exc}")

    def refresh(self, view: RunView, root: Ref | None = None) -> None:
        """Bring every stored message of the run up to date (chat.update only where the render changed).

        A live root is updated at most every `slack_update_interval`; an update due sooner is scheduled
        (in memory: the run's next event or its end, which is never paced, also brings it)."""
        final = view.run["status"] in TERMINAL
        for ref in self.store.refs_for_run(view.id):
            priority = URGENT
            if ref.kind in ("root", "incident_root"):
                priority = NORMAL if final else PROGRESS
                due = 0.0 if final else self.pacer.update_due(ref.key)
                if due > 0:
                    self._later[view.id] = min(self._later.get(view.id, float("inf")), time.monotonic() + due)
                    continue
                msg = B.incident_message(view, runbook_url(self.settings, view))
            elif ref.kind in ("approval", "escalation") and ref.approval_id:
                appr = view.approval(ref.approval_id)
                if appr is None:
                    continue
                ping = None
                if ref.kind == "escalation":
                    group = (appr.get("policy") or {}).get("escalate_to", {}).get("usergroup") \
                        or self.settings.slack_escalation_usergroup  # fmt: skip
                    ping = self.directory.describe([str(group)]) if group else self.who(appr)
                msg = B.approval_message(view, appr, self.who(appr), escalation_ping=ping)
            else:
                continue
            digest = msg.digest()
            if digest == ref.rendered_hash or ref.ts is None or ref.rendered_hash == GONE:
                continue
            try:
                self._api("chat.update", ref.channel, priority, self.client.chat_update, channel=ref.channel,
                          ts=ref.ts, text=msg.text, blocks=msg.blocks)  # fmt: skip
            except Deferred as exc:
                if priority == PROGRESS:  # progress waits in memory; the rows of the run are done
                    self._later[view.id] = time.monotonic() + exc.wait
                    continue
                raise
            except SlackApiError as exc:
                error = slack_error(exc)
                if error in REFUSED:
                    self.record_refusal(view.id, f"update of {ref.kind} {ref.key}", error)
                elif error not in UNUPDATABLE:
                    raise
                else:
                    log.warning("a run message can no longer be updated; leaving it", key=ref.key, error=error)
                    digest = GONE  # deleted or archived by someone: stop trying, keep delivering the rest
            if ref.kind in ("root", "incident_root"):
                self.pacer.updated(ref.key)
            self.store.set_hash(ref.key, digest)

    def _post_postmortem(self, row: Row) -> None:
        """The draft goes into the thread of the incident's first run, as a file plus a short note."""
        incident_id = str(row.payload.get("incident_id") or "")
        key = f"incident:{incident_id}:postmortem"
        if not incident_id or self.store.ref(key) is not None:
            return
        with self.rt.db.read() as conn:
            run_ids = [r.id for r in conn.execute(select(RUNS.c.id).where(RUNS.c.incident_id == incident_id)
                                                  .order_by(RUNS.c.created_at))]  # fmt: skip
        root = next((ref for ref in (self.store.ref(f"{rid}:root") for rid in run_ids) if ref is not None), None)
        if root is None:
            raise NoChannel(f"incident {incident_id} has no Slack thread to post its postmortem in")
        text = E.redact(str(row.payload.get("text") or ""))
        self._api("files.completeUploadExternal", None, NORMAL, self.client.files_upload_v2, channel=root.channel,
                  thread_ts=root.ts, content=text, filename=f"postmortem-{incident_id}.md",
                  title=E.clip(f"Postmortem draft: {incident_id}", 200))  # fmt: skip
        msg = B.notice(f":memo: Incident {E.code(incident_id)} resolved. The postmortem draft is attached; "
                       f"fill in impact, root cause and action items (`runbot postmortem {E.esc(incident_id)}`).")  # fmt: skip
        self._reply(root, key, msg)

    # ---- messages without a run ----------------------------------------------------------------------------------

    def _post_notice(self, channel: str, row: Row, msg: B.Message) -> None:
        if not channel:
            raise NoChannel(f"no channel for the {row.topic} notice")
        key = f"notice:row{row.id}"
        if self.store.ref(key) is not None:
            return
        resp = self.client.chat_postMessage(channel=channel, text=msg.text, blocks=msg.blocks)
        self.store.save(Ref(key, "notice", resp["channel"], resp["ts"], None, msg.digest()))

    def _deliver_global(self, row: Row) -> None:
        if row.topic == "postmortem.ready":
            self._post_postmortem(row)
            return
        if row.topic == "audit.head":  # runbot.audit.publish: the chain head, anchored in a channel
            self._post_notice(str(row.payload.get("channel") or ""), row, B.notice(E.code(row.payload.get("text"), 120)))
            return
        if row.topic not in ("freeze.on", "freeze.off"):
            return
        channel = self.settings.slack_default_channel
        if not channel:
            raise NoChannel("no default channel for the freeze announcement")
        key = f"notice:row{row.id}"
        if self.store.ref(key) is not None:
            return
        msg = B.freeze_notice(row.topic == "freeze.on", str(row.payload.get("actor") or "someone"),
                              str(row.payload.get("reason") or ""))  # fmt: skip
        resp = self._api("chat.postMessage", channel, URGENT, self.client.chat_postMessage, channel=channel,
                         text=msg.text, blocks=msg.blocks)  # fmt: skip
        self.store.save(Ref(key, "notice", resp["channel"], resp["ts"], None, msg.digest()))


def _priority(topic: str) -> int:
    return URGENT if topic in URGENT_TOPICS else NORMAL
