"""SQLModel tables. Schema changes go through Alembic (store/migrations); `alembic check` keeps them in sync."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from runbot.store.types import UTCDateTime


def _dt(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _json() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


class RunbookVersion(SQLModel, table=True):
    """Every runbook text ever loaded; runs point here so they keep the version they started with."""

    __tablename__ = "runbook_versions"
    __table_args__ = (UniqueConstraint("name", "version_hash"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version_hash: str
    source_path: str
    source: str = Field(sa_column=Column(Text, nullable=False))
    loaded_at: datetime = _dt(nullable=False)


class Incident(SQLModel, table=True):
    __tablename__ = "incidents"
    id: str = Field(primary_key=True)
    group_key: str = Field(index=True)
    status: str = Field(index=True)  # open | resolved
    title: str = ""
    severity: str | None = None
    labels: dict[str, Any] | None = _json()
    opened_at: datetime = _dt(nullable=False)
    resolved_at: datetime | None = _dt()
    updated_at: datetime = _dt(nullable=False)
    reopened: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # times a flapping alert reopened it
    # --- receivers are tenants (0006): an incident belongs to the Alertmanager receiver whose alerts opened it ---
    receiver: str = Field(default="", sa_column_kwargs={"server_default": ""})


class Alert(SQLModel, table=True):
    __tablename__ = "alerts"
    # an alert is its (receiver, fingerprint, startsAt): one receiver can neither repeat nor resolve another's (0006)
    __table_args__ = (UniqueConstraint("receiver", "fingerprint", "starts_at", name="uq_alerts_receiver_fingerprint_starts"),)
    id: str = Field(primary_key=True)
    fingerprint: str = Field(index=True)
    starts_at: datetime = _dt(nullable=False)
    ends_at: datetime | None = _dt()
    status: str  # firing | resolved
    alertname: str = Field(default="", index=True)
    labels: dict[str, Any] | None = _json()
    annotations: dict[str, Any] | None = _json()
    generator_url: str | None = None
    incident_id: str | None = Field(default=None, index=True)
    receiver: str = Field(default="", sa_column_kwargs={"server_default": ""})  # unquoted Alertmanager receiver name
    received_at: datetime = _dt(nullable=False)
    updated_at: datetime = _dt(nullable=False)
    matched: bool | None = Field(default=None, description="None until matching ran")
    # --- alertmanager intake (0002) ---
    group_key: str | None = Field(default=None, index=True)  # Alertmanager groupKey: one incident per group
    group_labels: dict[str, Any] | None = _json()
    pending_since: datetime | None = _dt(index=True)  # set while the intake worker still has to look at it
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # what intake decided, and why
    # fields beyond Alertmanager's, as the sender sent them (Grafana: dashboardURL, panelURL, silenceURL, imageURL,
    # values, valueString); None for Alertmanager alerts (0006)
    extras: dict[str, Any] | None = _json()


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_due", "status", "wake_at"),
        Index("ix_runs_conc", "runbook_name", "concurrency_key", "status"),
    )
    id: str = Field(primary_key=True)
    runbook_name: str = Field(index=True)
    runbook_version_id: int = Field(foreign_key="runbook_versions.id")
    status: str
    incident_id: str | None = Field(default=None, index=True)
    alert_id: str | None = Field(default=None, index=True)
    alert: dict[str, Any] | None = _json()
    requester: str = "system"
    params: dict[str, Any] | None = _json()
    concurrency_key: str | None = None
    manual: bool = False
    created_at: datetime = _dt(nullable=False)
    started_at: datetime | None = _dt()
    finished_at: datetime | None = _dt()
    updated_at: datetime = _dt(nullable=False)
    wake_at: datetime | None = _dt()
    lease_owner: str | None = None
    lease_expires_at: datetime | None = _dt()
    fence: int = 0
    cancel_requested: bool = False
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class StepExecution(SQLModel, table=True):
    """The journal: one row per attempt of a step (check before running, record after)."""

    __tablename__ = "step_executions"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "attempt"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step_id: str
    step_type: str
    attempt: int
    status: str
    idempotent: bool = True
    interrupted: bool = False  # ended by a crash or a human retry: does not use up the retry budget
    idempotency_key: str
    inputs: dict[str, Any] | None = _json()  # rendered params, secrets only as references
    output: dict[str, Any] | None = _json()
    summary: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    resume_state: dict[str, Any] | None = _json()
    started_at: datetime = _dt(nullable=False)
    finished_at: datetime | None = _dt()
    retry_at: datetime | None = _dt()
    wake_at: datetime | None = _dt()


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step_id: str
    name: str
    content_type: str
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = _dt(nullable=False)


class Approval(SQLModel, table=True):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("run_id", "step_id"),)
    id: str = Field(primary_key=True)  # opaque; the only thing a Slack button carries
    run_id: str = Field(index=True)
    step_id: str
    status: str
    runbook_version_id: int
    min_approvals: int = 1
    policy: dict[str, Any] | None = _json()
    requester: str = "system"
    requested_at: datetime = _dt(nullable=False)
    expires_at: datetime = _dt(nullable=False)
    escalated: bool = False
    decided_at: datetime | None = _dt()
    decided_by: str | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    version: int = 0  # compare-and-set counter


class ApprovalVote(SQLModel, table=True):
    __tablename__ = "approval_votes"
    __table_args__ = (UniqueConstraint("approval_id", "user_id"),)
    id: int | None = Field(default=None, primary_key=True)
    approval_id: str = Field(index=True)
    user_id: str
    user_name: str | None = None
    person: str | None = None  # who counts for min_approvals and self-approval (engine/approvals.py)
    on_behalf_of: str | None = None  # CLI `--as NAME`: recorded, never the identity
    decision: str  # approve | deny
    reason: str | None = None
    at: datetime = _dt(nullable=False)


class Timer(SQLModel, table=True):
    __tablename__ = "timers"
    __table_args__ = (Index("ix_timers_pending", "fired_at", "fire_at"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step_id: str | None = None
    purpose: str  # retry | wait | approval_timeout | verify | queue
    fire_at: datetime = _dt(nullable=False)
    fired_at: datetime | None = _dt()


class AuditEvent(SQLModel, table=True):
    """Append-only and hash-chained: hash = sha256(canonical content including prev_hash)."""

    __tablename__ = "audit_events"
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    ts: datetime = _dt(nullable=False, index=True)
    actor: str
    action: str = Field(index=True)
    run_id: str | None = Field(default=None, index=True)
    step_id: str | None = None
    incident_id: str | None = Field(default=None, index=True)
    runbook: str | None = None
    runbook_version: str | None = None
    outcome: str | None = None
    details: dict[str, Any] | None = _json()
    prev_hash: str
    hash: str


class AuditHead(SQLModel, table=True):
    """Single row: the chain's last seq and hash, locked by every appender (serialises the chain)."""

    __tablename__ = "audit_head"
    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str


class Outbox(SQLModel, table=True):
    """Messages for the outside world, written in the transaction that caused them, delivered after."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "delivered_at", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    topic: str
    run_id: str | None = Field(default=None, index=True)
    payload: dict[str, Any] | None = _json()
    created_at: datetime = _dt(nullable=False)
    next_attempt_at: datetime = _dt(nullable=False)
    delivered_at: datetime | None = _dt()
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Control(SQLModel, table=True):
    """Global switches (freeze) and small durable state, keyed by name."""

    __tablename__ = "controls"
    key: str = Field(primary_key=True)
    value: dict[str, Any] | None = _json()
    updated_at: datetime = _dt(nullable=False)


class SlackMessage(SQLModel, table=True):
    """Where a Slack message for a run lives, so updates land on the right message after a restart.

    `key` names the message within runbot (e.g. `r1:root`, `r1:approval:ap_x`, `r1:reply:diag:1:succeeded`);
    a row is written right after the post, and a post is skipped when its row exists (no duplicates on retry).
    """

    __tablename__ = "slack_messages"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(index=True, unique=True)
    run_id: str | None = Field(default=None, index=True)
    approval_id: str | None = Field(default=None, index=True)
    kind: str  # root | incident_root | incident_channel | approval | escalation | reply | notice
    channel: str  # channel id as Slack returned it
    ts: str | None = None
    thread_ts: str | None = None
    rendered_hash: str | None = None  # of the last blocks sent; an unchanged render is not sent again
    created_at: datetime = _dt(nullable=False)
    updated_at: datetime = _dt(nullable=False)


class SlackSeenEvent(SQLModel, table=True):
    """Slack deliveries already handled (event_id, trigger_id): a retried or replayed one never acts twice."""

    __tablename__ = "slack_seen_events"
    key: str = Field(primary_key=True)
    kind: str
    seen_at: datetime = _dt(nullable=False, index=True)


class AlertThrottle(SQLModel, table=True):
    """One alert whose run a rate limit refused during a storm: recorded, summarized, never dropped silently."""

    __tablename__ = "alert_throttles"
    id: int | None = Field(default=None, primary_key=True)
    alert_id: str = Field(index=True)
    runbook_name: str = Field(index=True)
    scope: str  # global | runbook
    incident_id: str | None = None
    at: datetime = _dt(nullable=False, index=True)


class WebhookDelivery(SQLModel, table=True):
    """An accepted webhook body, committed before the 2xx and unpacked into alerts by the intake worker.

    The request path stores one row per notification (whatever its size) and answers; dedupe, incidents
    and matching happen after. Processed rows keep their outcome (and body) for inspection until pruned.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_pending", "id", sqlite_where=text("processed_at IS NULL"),
              postgresql_where=text("processed_at IS NULL")),
    )  # fmt: skip
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = _dt(nullable=False)
    receiver: str | None = None  # the payload's Alertmanager receiver
    alerts: int
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    processed_at: datetime | None = _dt()
    new: int | None = None  # alerts stored for the first time, or resolutions recorded
    duplicates: int | None = None  # repeats of what was already stored
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # why it could not be unpacked


class WebhookDeliveryProgress(SQLModel, table=True):
    """How far a big delivery is unpacked: its next slice starts at `unpacked` (0006).

    Written in the transaction of each slice, so a crash resumes at the next one; deleted when the delivery
    is done. Kept apart from the delivery row because SQLite rewrites a whole row on update, and that row
    holds the body (up to 4 MiB): a counter there cost ~25 ms per slice.
    """

    __tablename__ = "webhook_delivery_progress"
    delivery_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    unpacked: int
    new: int
    duplicates: int


class WebhookReject(SQLModel, table=True):
    """An authenticated webhook body that was refused (malformed, wrong version, too big), kept size-capped."""

    __tablename__ = "webhook_rejects"
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = _dt(nullable=False, index=True)
    receiver: str | None = None  # the credential that authenticated the request
    status_code: int
    error: str = Field(sa_column=Column(Text, nullable=False))
    body_size: int
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    truncated: bool = False


class VaultLease(SQLModel, table=True):
    """A dynamic credential's Vault lease, tracked with the run that obtained it so it ends with the run.

    Only the lease id, path and timing are stored; the credential values live in the memory of the
    `holder` process and nowhere else.
    """

    __tablename__ = "vault_leases"
    id: int | None = Field(default=None, primary_key=True)
    lease_id: str = Field(index=True, unique=True)
    run_id: str = Field(index=True)
    step_id: str
    path: str  # e.g. database/creds/readonly
    holder: str  # owner id of the process that holds the values
    renewable: bool = False
    ttl_seconds: int = 0  # as last granted by Vault
    renewals: int = 0
    issued_at: datetime = _dt(nullable=False)
    expires_at: datetime | None = _dt()
    last_renewed_at: datetime | None = _dt()
    revoked_at: datetime | None = _dt(index=True)
    revoke_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
