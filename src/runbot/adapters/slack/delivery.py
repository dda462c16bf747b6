"""The outbox worker: turns outbox rows into Slack posts and in-place updates, surviving Slack trouble.

Rows are handled per run, in order. Every pass re-renders the run's messages from the database, so an
update after a restart lands on the stored message (`slack_messages`) with the newest state. Each post is
recorded under a stable key right after it succeeds and skipped when the key exists, so retrying a group
never posts twice. A 429 waits for its Retry-After (for the whole workspace), 5xx and network errors back
off exponentially; nothing is dropped for them. Only errors Slack will never accept (channel_not_found ...)
are dropped after `slack_max_attempts`.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import select, update

from runbot.adapters.slack import blocks as B
from runbot.adapters.slack import escape as E
from runbot.adapters.slack.authz import Authorizer, Directory, DirectoryError
from runbot.adapters.slack.routing import channel_for, incident_channel_name, runbook_url
from runbot.adapters.slack.runview import RunView, load_run_view
from runbot.adapters.slack.slackapi import classify, slack_error
from runbot.adapters.slack.store import Ref, SlackStore
from runbot.engine.state import ARTIFACTS, OUTBOX, RUNS
from runbot.redaction import REGISTRY
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


class _Taken(Exception):
    """Another worker claimed part of the group first (rolls the claim back)."""


class NoChannel(Exception):
    """No channel is configured for this run: nothing can be delivered."""


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
        self.client = client
        self.directory = directory
        self.authorizer = authorizer
        self.store = store
        self.paused_until = 0.0  # monotonic; set by a 429 (Slack's limits are per workspace and method)
        self._last_prune = 0.0

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.deliver_due()
                if time.monotonic() - self._last_prune > PRUNE_EVERY:
                    self._last_prune = time.monotonic()
                    self.store.prune_seen()
            except Exception as exc:  # a database hiccup: try again next tick
                log.error("outbox pass failed", error=f"{type(exc).__name__}: {exc}")
            self._wake.wait(self.settings.slack_outbox_poll)

    # ---- one pass -------------------------------------------------------------------------------------------

    def deliver_due(self, limit: int = 500) -> int:
        """Deliver what is due now; returns the number of rows delivered."""
        if time.monotonic() < self.paused_until:
            return 0
        now = utcnow()
        with self.rt.db.read() as conn:
            rows = conn.execute(select(OUTBOX).where(OUTBOX.c.delivered_at.is_(None))
                                .order_by(OUTBOX.c.id).limit(limit)).mappings().all()  # fmt: skip
        groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        for r in rows:
            groups.setdefault(r["run_id"] or f"row:{r['id']}", []).append(dict(r))
        delivered = 0
        for key, group in groups.items():
            if self._stop.is_set() or time.monotonic() < self.paused_until:
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
        if "rate limited" in trouble.reason:
            self.paused_until = time.monotonic() + delay
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
        view = load_run_view(self.rt, run_id)
        if view is None:
            return
        root = self._ensure_root(view)
        for row in batch:
            self._handle(view, root, row)
        self.refresh(view, root)

    def _ensure_root(self, view: RunView) -> Ref:
        key = f"{view.id}:root"
        ref = self.store.ref(key)
        if ref is None:
            channel = channel_for(self.settings, view)
            if not channel:
                raise NoChannel("no Slack channel for this run (set RUNBOT_SLACK_DEFAULT_CHANNEL)")
            msg = B.incident_message(view, runbook_url(self.settings, view))
            resp = self.client.chat_postMessage(channel=channel, text=msg.text, blocks=msg.blocks,
                                                unfurl_links=False, unfurl_media=False)  # fmt: skip
            ref = Ref(key, "root", resp["channel"], resp["ts"], None, msg.digest(), view.id)
            self.store.save(ref)
        if self.settings.slack_incident_channels:
            self._ensure_incident_channel(view)
        return ref

    def _ensure_incident_channel(self, view: RunView) -> None:
        ikey = f"incident:{(view.incident or {}).get('id') or view.id}:channel"
        chan = self.store.ref(ikey)
        if chan is None:
            name = incident_channel_name(self.settings, view)
            try:
                resp = self.client.conversations_create(name=name)
            except SlackApiError as exc:
                if slack_error(exc) != "name_taken":
                    raise
                resp = self.client.conversations_create(name=f"{name[:74]}-{random.randrange(16**4):04x}")
            chan = Ref(ikey, "incident_channel", resp["channel"]["id"], None, None, None, view.id)
            self.store.save(chan)
            users = self._owners(view)
            if users:
                self.client.conversations_invite(channel=chan.channel, users=",".join(sorted(users)[:1000]))
        rkey = f"{view.id}:incident_root"
        if self.store.ref(rkey) is None:
            msg = B.incident_message(view, runbook_url(self.settings, view))
            resp = self.client.chat_postMessage(channel=chan.channel, text=msg.text, blocks=msg.blocks,
                                                unfurl_links=False, unfurl_media=False)  # fmt: skip
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
                    refs += [str(labels[lbl]) for lbl in a.from_labels if labels.get(lbl)]
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
            self._step_replies(view, root, sid)
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
               approval_id: str | None = None) -> Ref:  # fmt: skip
        ref = self.store.ref(key)
        if ref is not None:
            return ref
        resp = self.client.chat_postMessage(channel=root.channel, thread_ts=root.ts, text=msg.text, blocks=msg.blocks,
                                            reply_broadcast=broadcast, unfurl_links=False, unfurl_media=False)  # fmt: skip
        ref = Ref(key, kind, resp["channel"], resp["ts"], root.ts, msg.digest(), root.run_id, approval_id)
        self.store.save(ref)
        return ref

    def _step_replies(self, view: RunView, root: Ref, sid: str) -> None:
        """One reply per finished attempt (final failures only; retried ones show in the step list)."""
        line = next((s for s in view.steps if s.step_id == sid), None)
        diagnostic = line is not None and not line.changes_things
        for rec in view.journal.get(sid, []):
            status = rec["status"]
            if status not in ("succeeded", "failed") or (status == "failed" and rec.get("retry_at") is not None):
                continue
            if rec["step_type"] == "slack.message" and status == "succeeded":
                self._message_step(root, view.id, sid, rec)
                continue
            msg = B.step_result_reply(view, sid, rec["attempt"], show_output=diagnostic)
            if msg is not None:
                self._reply(root, f"{view.id}:reply:{sid}:{rec['attempt']}:{status}", msg)
        for art in view.artifacts:
            if art["step_id"] == sid:
                self._upload(root, art)

    def _message_step(self, root: Ref, run_id: str, sid: str, rec: dict[str, Any]) -> None:
        """A `slack.message` step: its text (escaped, already redacted) in the thread, and a channel if named."""
        out = rec.get("output") or {}
        msg = B.notice(E.esc(str(out.get("text") or "")))
        self._reply(root, f"{run_id}:reply:{sid}:{rec['attempt']}:message", msg, broadcast=bool(out.get("broadcast")))
        channel = out.get("channel")
        key = f"{run_id}:message:{sid}:{rec['attempt']}:{channel}"
        if channel and self.store.ref(key) is None:
            resp = self.client.chat_postMessage(channel=str(channel), text=msg.text, blocks=msg.blocks,
                                                unfurl_links=False, unfurl_media=False)  # fmt: skip
            self.store.save(Ref(key, "message", resp["channel"], resp["ts"], None, msg.digest(), root.run_id))

    def _upload(self, root: Ref, art: dict[str, Any]) -> None:
        key = f"{root.run_id}:file:{art['id']}"
        if self.store.ref(key) is not None:
            return
        with self.rt.db.read() as conn:
            data = conn.execute(select(ARTIFACTS.c.data).where(ARTIFACTS.c.id == art["id"])).scalar_one()
        title = f"{art['step_id']}: {art['name']}"
        resp = self.client.files_upload_v2(channel=root.channel, thread_ts=root.ts, file=bytes(data),
                                           filename=art["name"], title=E.clip(title, 200))  # fmt: skip
        files = resp.get("files") or [{}]
        self.store.save(Ref(key, "file", root.channel, None, root.ts, str(files[0].get("id") or ""), root.run_id))

    def who(self, appr: dict[str, Any]) -> str:
        return self.directory.describe(self.authorizer.approvers(appr))

    def _post_approval(self, view: RunView, root: Ref, approval_id: str) -> None:
        appr = view.approval(approval_id)
        if appr is None:
            return
        msg = B.approval_message(view, appr, self.who(appr))
        self._reply(root, f"{view.id}:approval:{approval_id}", msg, broadcast=True, kind="approval",
                    approval_id=approval_id)  # fmt: skip

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
                resp = self.client.chat_postMessage(channel=channel, text=msg.text, blocks=msg.blocks,
                                                    unfurl_links=False, unfurl_media=False)  # fmt: skip
                self.store.save(Ref(key, "escalation", resp["channel"], resp["ts"], None, msg.digest(), view.id,
                                    approval_id))  # fmt: skip
            where = E.channel(channel)
        else:
            self._reply(root, key, msg, broadcast=True, kind="escalation", approval_id=approval_id)
            where = "this thread"
        self._reply(root, f"{view.id}:reply:row{row.id}",
                    B.notice(f":rotating_light: Approval for {E.code(appr['step_id'])} escalated to {where}; "
                             f"it now expires {E.date(appr['expires_at'])}."))  # fmt: skip

    def refresh(self, view: RunView, root: Ref | None = None) -> None:
        """Bring every stored message of the run up to date (chat.update only where the render changed)."""
        for ref in self.store.refs_for_run(view.id):
            if ref.kind in ("root", "incident_root"):
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
                self.client.chat_update(channel=ref.channel, ts=ref.ts, text=msg.text, blocks=msg.blocks)
            except SlackApiError as exc:
                if slack_error(exc) not in UNUPDATABLE:
                    raise
                log.warning("a run message can no longer be updated; leaving it", key=ref.key, error=slack_error(exc))
                digest = GONE  # deleted or archived by someone: stop trying, keep delivering the rest
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
        text = REGISTRY.redact(str(row.payload.get("text") or ""))
        self.client.files_upload_v2(channel=root.channel, thread_ts=root.ts, content=text,
                                    filename=f"postmortem-{incident_id}.md", title=f"Postmortem draft: {incident_id}")  # fmt: skip
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
        resp = self.client.chat_postMessage(channel=channel, text=msg.text, blocks=msg.blocks)
        self.store.save(Ref(key, "notice", resp["channel"], resp["ts"], None, msg.digest()))
