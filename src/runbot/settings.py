"""One settings object, built once at start and passed down; nothing reads the environment at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

MASK = "****"


class Settings(BaseSettings):
    """Effective configuration: init kwargs > RUNBOT_* environment > config file > defaults."""

    model_config = SettingsConfigDict(env_prefix="RUNBOT_", extra="ignore", env_nested_delimiter="__")

    config_file: Path | None = Field(default=None, description="YAML or TOML file with any of these settings")
    data_dir: Path = Field(default=Path("data"), description="Where the SQLite database and artifacts live")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/runbot.db (WAL mode)"
    )
    runbooks_dir: Path = Field(default=Path("runbooks"), description="Directory of runbook YAML files")
    host: str = Field(default="127.0.0.1", description="HTTP listen address")
    port: int = Field(default=8080, description="HTTP listen port")
    log_level: str = Field(default="INFO")
    log_format: Literal["console", "json"] = Field(default="console")
    api_token: SecretStr | None = Field(default=None, description="Bearer token for /api and /admin endpoints")
    engine_workers: int = Field(default=16, ge=1, description="Runs advanced concurrently by one engine loop")
    engine_loops_pg: int = Field(default=4, ge=1, description="Engine loops per process on PostgreSQL (SQLite: 1)")
    pg_async_commit_idempotent: bool = Field(
        default=True,
        description="PostgreSQL: commit idempotent steps' records with synchronous_commit=off (a database crash "
        "may re-run such a step; a runbot crash loses nothing). Claims of other steps always commit synchronously",
    )
    lease_seconds: float = Field(default=30.0, gt=1, description="Run lease; a crashed owner's runs are taken over after this")
    poll_interval: float = Field(default=1.0, gt=0, description="How often the engine looks for due work")
    instance_id: str | None = Field(default=None, description="Lease owner name; default host:pid")
    secrets_provider: Literal["env", "file", "vault"] = Field(
        default="env", description="Where secret('path#key') is resolved for local use before Vault is set up"
    )
    secrets_file: Path | None = Field(default=None, description="YAML mapping path -> {key: value} for the file provider")

    # --- prometheus ---
    class PrometheusServer(BaseModel):
        """One Prometheus-compatible endpoint (Prometheus, Thanos, Mimir, VictoriaMetrics) steps query by name."""

        model_config = ConfigDict(extra="forbid")

        url: str = Field(description="Base URL, e.g. https://prometheus.eu.internal:9090 (no /api/v1)")
        username: str | None = Field(default=None, description="Basic auth user")
        password: SecretStr | None = Field(default=None, description="Basic auth password")
        bearer_token: SecretStr | None = Field(default=None, description="Sent as Authorization: Bearer")
        verify_tls: bool = Field(default=True, description="Verify the server certificate")
        ca_file: Path | None = Field(default=None, description="PEM CA bundle for a private CA")
        client_cert: Path | None = Field(default=None, description="PEM client certificate (mTLS)")
        client_key: Path | None = Field(default=None, description="PEM client key (mTLS)")
        headers: dict[str, str] = Field(default_factory=dict, description="Extra non-secret headers (X-Scope-OrgID)")
        timeout: float | None = Field(default=None, gt=0, description="Per-request timeout; default prometheus_timeout")

    prometheus_url: str | None = Field(default=None, description="Default Prometheus (server `default`) base URL")
    prometheus_username: str | None = Field(default=None, description="Basic auth user for the default server")
    prometheus_password: SecretStr | None = Field(default=None, description="Basic auth password, default server")
    prometheus_bearer_token: SecretStr | None = Field(default=None, description="Bearer token, default server")
    prometheus_verify_tls: bool = Field(default=True, description="Verify the default server's certificate")
    prometheus_ca_file: Path | None = Field(default=None, description="PEM CA bundle for the default server")
    prometheus_client_cert: Path | None = Field(default=None, description="PEM client cert (mTLS), default server")
    prometheus_client_key: Path | None = Field(default=None, description="PEM client key (mTLS), default server")
    prometheus_servers: dict[str, PrometheusServer] = Field(
        default_factory=dict, description='Named servers, e.g. {"eu": {"url": "https://...", "bearer_token": "..."}}'
    )
    prometheus_timeout: float = Field(default=10.0, gt=0, description="Per-request timeout in seconds")
    prometheus_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries per step on 5xx/429/connection errors, within the step timeout"
    )
    prometheus_max_series: int = Field(default=100, ge=1, description="Series kept in a query/range step output")
    prometheus_max_points: int = Field(default=500, ge=2, description="Points per series kept in a range output")
    prometheus_max_response_bytes: int = Field(
        default=64 * 2**20, ge=1024, description="Largest API answer read; bigger ones fail (narrow the query)"
    )
    # --- end prometheus ---

    # --- http and command steps ---
    http_allow_hosts: list[str] = Field(
        default_factory=list,
        description='Hosts http.request may call, JSON list of [scheme://]host[:port] patterns; "*.suffix" '
        "matches subdomains. Empty: no outbound HTTP from steps",
    )
    http_allow_cidrs: list[str] = Field(
        default_factory=list,
        description="Private/loopback/link-local ranges steps may reach anyway (e.g. 10.20.0.0/16). "
        "Metadata addresses (169.254.169.254, ...) need their exact /32 or /128",
    )
    http_allow_schemes: list[str] = Field(default_factory=lambda: ["https", "http"], description="http and/or https")
    http_max_redirects: int = Field(default=5, ge=0, le=30, description="Redirects followed (each re-checked)")
    http_max_response_bytes: int = Field(
        default=1_048_576, ge=0, description="Response body bytes kept in a step output; the rest is dropped"
    )
    http_ca_file: Path | None = Field(default=None, description="PEM CA bundle for internal HTTPS services")
    http_user_agent: str = Field(default="runbot", description="User-Agent sent by http.request")
    command_allow: list[str] = Field(
        default_factory=list,
        description="Executables `command` may run: absolute paths, or bare names resolved via PATH",
    )
    command_env_allow: list[str] = Field(
        default_factory=lambda: ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"],
        description="Environment variables passed through to commands; all others are dropped",
    )
    command_max_output_bytes: int = Field(default=1_048_576, ge=0, description="Bytes kept per stdout/stderr")
    command_kill_grace: float = Field(
        default=5.0, ge=0, description="Seconds between SIGTERM and SIGKILL to a timed-out process group"
    )
    command_ssh_hosts: list[str] = Field(
        default_factory=list, description="Hosts `command` may run on over ssh: host[:port] patterns, *.suffix"
    )
    command_ssh_allow: list[str] = Field(
        default_factory=list, description="Remote executables allowed over ssh (argv[0], compared literally)"
    )
    command_ssh_known_hosts: Path | None = Field(
        default=None, description="known_hosts file for ssh (StrictHostKeyChecking=yes); required for host:"
    )
    command_ssh_binary: str = Field(default="ssh", description="OpenSSH client (path or name on PATH)")
    command_ssh_identity: Path | None = Field(default=None, description="Private key for ssh (-i, IdentitiesOnly)")
    command_ssh_user: str | None = Field(default=None, description="Default remote user for ssh")
    command_ssh_connect_timeout: float = Field(default=10.0, gt=0, description="ssh ConnectTimeout in seconds")

    @field_validator("http_allow_hosts", "command_ssh_hosts", mode="after")
    @classmethod
    def _host_patterns(cls, v: list[str]) -> list[str]:
        from runbot.netpolicy import HostPattern

        return [str(HostPattern.parse(p)) for p in v]

    @field_validator("http_allow_cidrs", mode="after")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        from runbot.netpolicy import parse_cidrs

        return [str(n) for n in parse_cidrs(v)]

    @field_validator("http_allow_schemes", mode="after")
    @classmethod
    def _schemes(cls, v: list[str]) -> list[str]:
        out = [s.strip().lower() for s in v]
        bad = [s for s in out if s not in ("http", "https")]
        if bad:
            raise ValueError(f"unsupported scheme(s) {bad}: only http and https")
        return out

    # --- end http and command steps ---

    # --- slack ---
    slack_bot_token: SecretStr | None = Field(
        default=None, description="Bot token (xoxb-...); setting it turns Slack on. `secret:PATH#KEY` reads it "
        "from the secrets provider (Vault)",
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None, description="Signing secret for HTTP mode (verifies every request); `secret:PATH#KEY` allowed"
    )
    slack_app_token: SecretStr | None = Field(
        default=None, description="App-level token (xapp-...) for Socket Mode; `secret:PATH#KEY` allowed"
    )
    slack_mode: Literal["auto", "http", "socket"] = Field(
        default="auto", description="auto: Socket Mode when an app token is set, else HTTP"
    )
    slack_path: str = Field(default="/slack/events", description="HTTP mode: one URL for events, commands, actions")
    slack_socket_ping_interval: float = Field(
        default=10.0, gt=0, description="Socket Mode ping interval; also the retry delay while Slack is unreachable"
    )
    slack_api_url: str = Field(default="https://slack.com/api/", description="Web API base URL (tests, proxies)")
    slack_team_id: str | None = Field(default=None, description="Workspace allowed to act; default: auth.test's")
    slack_enterprise_id: str | None = Field(default=None, description="Enterprise Grid org allowed to act")
    slack_default_channel: str | None = Field(default=None, description="Incident threads go here unless routed")
    slack_label_channels: dict[str, dict[str, str]] = Field(
        default_factory=dict, description='Route by alert label: {"team": {"api": "#team-api", "db": "C0DBA"}}'
    )
    slack_escalation_channel: str | None = Field(default=None, description="Where timed-out approvals escalate")
    slack_escalation_usergroup: str | None = Field(
        default=None, description="User group pinged (and allowed to approve) on escalation"
    )
    slack_usergroup_map: dict[str, str] = Field(
        default_factory=dict, description='Aliases for group names in runbooks and settings: {"oncall": "S0API"} '
        "(alert label values go through RUNBOT_APPROVAL_LABEL_GROUPS)"
    )
    slack_usergroup_cache_seconds: float = Field(default=60.0, ge=0, description="How long group members are cached")
    slack_command: str = Field(default="/runbot", description="The slash command's name")
    slack_run_allow: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Who may start which runbook with `/runbot run`: {"api-*": ["S0SRE", "U0ALICE"], "*": ["sre"]}; '
        'values are user ids, user group ids or handles, or "*" (anyone). Empty: nobody',
    )
    slack_operators: list[str] = Field(
        default_factory=list, description="Users/user groups who may cancel any run and unfreeze"
    )
    slack_freeze_allow: list[str] = Field(
        default_factory=list,
        description="Who may pull the kill switch (`freeze`) besides the operators: user ids, user group ids or "
        'handles, or "*" (anyone). Default: operators only (any workspace member could otherwise stop all remediations)',
    )
    # --- approval policy (engine/approvals.py) ---
    approval_label_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description='`approvers.from_labels`: label value -> Slack user groups allowed to approve, e.g. '
        '{"team-api": ["S0APIGROUP"]}. A label value not in this table names nobody (never a user or "*")',
    )
    identity_map: dict[str, str] = Field(
        default_factory=dict,
        description='Slack accounts to host users, e.g. {"slack:U0ALICE": "alice"}: one person across Slack and '
        "the CLI, for self-approval and distinct approvers (keys slack:U… or slack:T…/U…)",
    )
    approval_cli_any_host_user: bool = Field(
        default=False,
        description="Allow CLI break-glass approval by any host user when a step lists no `approvers.cli_users`. "
        "Default false: such steps cannot be approved from the host",
    )
    @field_validator("identity_map", mode="after")
    @classmethod
    def _identity_map(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        bad = [k for k in v if not re.fullmatch(r"slack:([TE][A-Z0-9]{1,20}/)?[UW][A-Z0-9]{1,20}", k)]
        if bad:
            raise ValueError(f"identity_map keys must be slack:U… or slack:T…/U… user ids, not {bad}")
        return {k: str(u).removeprefix("cli:") for k, u in v.items() if str(u).strip()}

    slack_incident_channels: bool = Field(default=False, description="Create a channel per incident and invite owners")
    slack_incident_channel_prefix: str = Field(default="inc", description="Incident channel name prefix")
    slack_incident_channel_invite: list[str] = Field(
        default_factory=list, description="Users/user groups always invited to incident channels"
    )
    slack_runbook_url: str | None = Field(
        default=None, description="Link to a runbook's source: {path} (relative to runbooks_dir), {file}, {name}; "
        "e.g. https://git.example/ops/runbooks/blob/main/{path}"
    )
    slack_outbox_poll: float = Field(default=0.5, gt=0, description="Seconds between outbox scans")
    slack_retry_max: float = Field(default=300.0, gt=0, description="Longest wait between delivery attempts")
    slack_rate_scale: float = Field(
        default=1.0, gt=0, description="Multiplies Slack's rate limits runbot paces itself to (tests: a faster fake)"
    )
    slack_update_interval: float = Field(
        default=3.0, ge=0, description="Seconds between two in-place updates of one live run message"
    )
    slack_storm_threads: int = Field(
        default=5, ge=1, description="Runs of one incident that get a thread each; later ones share one summary"
    )
    slack_max_attempts: int = Field(
        default=8, ge=1, description="Attempts before a message Slack refuses for good (not 429/5xx) is dropped"
    )
    # --- end slack ---

    # --- audit export, retention and postmortem ---
    retention_runs_days: float | None = Field(
        default=None, gt=0, description="Delete finished runs (steps, approvals, artifacts) older than this; unset: keep"
    )
    retention_alerts_days: float | None = Field(
        default=None, gt=0, description="Delete raw alerts older than this (not those of open incidents); unset: keep"
    )
    retention_audit_days: float | None = Field(
        default=None, gt=0,
        description="Delete audit events older than this, leaving a recorded chain anchor; unset (default): never",
    )
    retention_interval_hours: float = Field(
        default=24.0, gt=0, description="How often `serve` applies retention when any retention is set"
    )
    postmortem_auto: bool = Field(
        default=True, description="Render the postmortem skeleton when an incident resolves and queue it for Slack"
    )
    postmortem_format: Literal["md", "html"] = Field(default="md", description="Format of the automatic postmortem")
    postmortem_templates_dir: Path | None = Field(
        default=None,
        description="Team templates: <team>.<md|html>.j2, then postmortem.<md|html>.j2; else the built-in ones",
    )
    audit_head_publish_interval: float | None = Field(
        default=None, gt=0,
        description="Seconds between publications of the audit chain head by `serve` (anchoring); unset: never",
    )
    audit_head_publish_log: bool = Field(default=True, description="Publish the head as a log line")
    audit_head_publish_slack_channel: str | None = Field(
        default=None, description="Also post the head to this Slack channel (through the outbox)"
    )
    audit_head_publish_webhook_url: str | None = Field(
        default=None, description="Also POST the head as JSON here; must pass RUNBOT_HTTP_ALLOW_HOSTS/_CIDRS"
    )
    audit_head_publish_webhook_token: SecretStr | None = Field(
        default=None, description="Sent to the head webhook as Authorization: Bearer"
    )
    api_docs: Literal["off", "token", "public"] = Field(
        default="off",
        description="/docs, /redoc and /openapi.json: off (default), token (need the API bearer token) or public",
    )
    # --- end audit export, retention and postmortem ---

    # --- alertmanager intake ---
    class WebhookCredential(BaseModel):
        """Credentials one named Alertmanager receiver sends (its webhook_configs http_config)."""

        model_config = ConfigDict(extra="forbid")

        token: SecretStr | None = Field(default=None, description="Bearer token (http_config.authorization)")
        username: str | None = Field(default=None, description="Basic auth user (http_config.basic_auth)")
        password: SecretStr | None = Field(default=None, description="Basic auth password")

    class RunLimit(BaseModel):
        """A token bucket for new alert-triggered runs: `per_minute` sustained, `burst` at once."""

        model_config = ConfigDict(extra="forbid")

        per_minute: float = Field(gt=0, description="Sustained new runs per minute")
        burst: int = Field(ge=1, description="New runs allowed at once before the rate applies")

    alertmanager_webhook_token: SecretStr | None = Field(
        default=None, description="Bearer token the webhook accepts from any receiver"
    )
    alertmanager_webhook_username: str | None = Field(default=None, description="Basic auth user the webhook accepts")
    alertmanager_webhook_password: SecretStr | None = Field(default=None, description="Basic auth password")
    alertmanager_webhook_receivers: dict[str, WebhookCredential] = Field(
        default_factory=dict,
        description='Per-receiver credentials, e.g. {"prod": {"token": "..."}}; they only post as that receiver',
    )
    alertmanager_receiver_runbooks: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Runbooks each receiver may start, as globs, e.g. {"prod": ["api-*", "disk-*"], "*": []}; '
        'a receiver not listed (and no "*" entry): all runbooks',
    )
    alertmanager_allow_unauthenticated: bool = Field(
        default=False, description="Accept webhooks without credentials (local demos only)"
    )
    alertmanager_max_body_bytes: int = Field(default=4_194_304, ge=1024, description="Largest webhook body accepted")
    alertmanager_reject_keep_bytes: int = Field(
        default=65_536, ge=0, description="Bytes of a rejected (authenticated) body kept for inspection"
    )
    alertmanager_rejects_keep: int = Field(default=1000, ge=0, description="Rejected payloads kept; oldest pruned")
    alertmanager_process: bool = Field(
        default=True, description="Unpack and match accepted deliveries in this process (false: accept only)"
    )
    alertmanager_batch_size: int = Field(default=100, ge=1, description="Alerts unpacked and matched per transaction")
    alertmanager_backlog_max_alerts: int = Field(
        default=1_000_000, ge=1,
        description="Accepted alerts not yet unpacked beyond which the webhook answers 503 (Alertmanager retries)",
    )
    alertmanager_deliveries_keep: int = Field(
        default=10_000, ge=0, description="Processed webhook deliveries kept (their outcome); oldest pruned"
    )
    alertmanager_flap_seconds: float = Field(
        default=900.0, ge=0, description="An alert firing again this soon after it resolved reopens its incident"
    )
    alertmanager_runs_per_minute: float = Field(default=60.0, gt=0, description="Global rate of new alert runs")
    alertmanager_runs_burst: int = Field(default=20, ge=1, description="Global burst of new alert runs")
    alertmanager_runbook_runs_per_minute: float = Field(default=10.0, gt=0, description="Per-runbook rate")
    alertmanager_runbook_runs_burst: int = Field(default=5, ge=1, description="Per-runbook burst")
    alertmanager_runbook_limits: dict[str, RunLimit] = Field(
        default_factory=dict, description='Per-runbook overrides, e.g. {"disk-usage": {"per_minute": 2, "burst": 1}}'
    )
    alertmanager_url: str | None = Field(
        default=None, description="Alertmanager base URL; when set, remediations wait while a silence matches"
    )
    alertmanager_api_token: SecretStr | None = Field(default=None, description="Bearer token for the Alertmanager API")
    alertmanager_silence_timeout: float = Field(default=2.0, gt=0, description="Alertmanager API timeout (seconds)")
    alertmanager_silence_recheck_seconds: float = Field(
        default=30.0, gt=0, description="How often a held remediation looks at the silence again"
    )
    alertmanager_silence_on_error: Literal["proceed", "hold"] = Field(
        default="hold", description="When silences cannot be checked: hold the step with the reason (re-checked), or proceed (logged)"
    )
    # --- end alertmanager intake ---

    # --- deploy ---
    shutdown_grace_seconds: float = Field(
        default=15.0, ge=0,
        description="On SIGTERM: how long steps in flight may take to finish before their runs are handed to "
        "another replica (keep it below the orchestrator's kill timeout, e.g. terminationGracePeriodSeconds)",
    )
    shutdown_flush_seconds: float = Field(
        default=5.0, ge=0, description="On SIGTERM: how long queued Slack messages are still delivered"
    )
    # --- end deploy ---

    # --- vault ---
    vault_addr: str | None = Field(default=None, description="Vault/OpenBao address, e.g. https://vault.internal:8200")
    vault_namespace: str | None = Field(default=None, description="Vault Enterprise / OpenBao namespace")
    vault_ca_file: Path | None = Field(default=None, description="PEM CA bundle that signed Vault's certificate")
    vault_client_cert: Path | None = Field(default=None, description="PEM client certificate (mTLS to Vault)")
    vault_client_key: Path | None = Field(default=None, description="PEM client key (mTLS to Vault)")
    vault_verify_tls: bool = Field(default=True, description="Verify Vault's certificate (never turn off in production)")
    vault_timeout: float = Field(default=10.0, gt=0, description="Seconds per Vault request")
    vault_auth_method: Literal["token", "approle", "kubernetes"] = Field(
        default="token", description="How runbot logs in to Vault"
    )
    vault_token: SecretStr | None = Field(default=None, description="token auth: the Vault token")
    vault_token_file: Path | None = Field(
        default=None, description="token auth: file holding the token (re-read when the token stops working, e.g. Vault Agent sink)"
    )
    vault_approle_mount: str = Field(default="approle", description="AppRole auth mount path")
    vault_approle_role_id: str | None = Field(default=None, description="AppRole role_id")
    vault_approle_secret_id: SecretStr | None = Field(default=None, description="AppRole secret_id (plain)")
    vault_approle_secret_id_file: Path | None = Field(default=None, description="File holding the plain secret_id")
    vault_approle_wrapped_secret_id: SecretStr | None = Field(
        default=None, description="Response-wrapping token around the secret_id; validated and unwrapped once at start"
    )
    vault_approle_wrapped_secret_id_file: Path | None = Field(
        default=None, description="File holding the wrapping token for the secret_id"
    )
    vault_approle_role_name: str | None = Field(
        default=None, description="Role name the wrapped secret_id must come from (checks its creation path)"
    )
    vault_kubernetes_role: str | None = Field(default=None, description="kubernetes auth: Vault role to log in as")
    vault_kubernetes_mount: str = Field(default="kubernetes", description="kubernetes auth mount path")
    vault_kubernetes_jwt_file: Path = Field(
        default=Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        description="kubernetes auth: service-account JWT file (re-read at every login)",
    )
    vault_kv_mount: str = Field(default="kv", description="KV v2 mount that secret('kv/PATH#KEY') reads from")
    vault_renew_fraction: float = Field(
        default=0.67, gt=0.05, lt=0.95, description="Renew the token and leases after this fraction of their TTL"
    )
    vault_lease_sweep_interval: float = Field(
        default=30.0, gt=0, description="Seconds between sweeps that revoke leases of runs that are over"
    )
    vault_revoke_token_on_shutdown: bool = Field(
        default=True, description="Revoke a token obtained by login (AppRole, Kubernetes) on clean shutdown"
    )
    # --- end vault ---

    # --- observability ---
    worker_stall_seconds: float = Field(
        default=120.0, gt=0, description="A worker busy this long without a heartbeat makes /healthz fail"
    )
    debug_worker_hooks: bool = Field(
        default=False, description="Test only: POST /debug/workers/{name}/kill ends a worker (to test /healthz)"
    )
    # --- end observability ---

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        """postgres:// and postgresql:// (as Heroku, libpq and most docs write them) mean psycopg 3 here."""
        if v is None:
            return v
        for prefix in ("postgres://", "postgresql://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix):]
        if not v.startswith(("sqlite:", "postgresql+psycopg:")):
            raise ValueError("use sqlite:///PATH or postgresql://USER@HOST/DB (psycopg 3)")
        return v

    @field_validator("data_dir", "runbooks_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        from runbot.settings_files import CredentialFileSource  # RUNBOT_<CREDENTIAL>_FILE

        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, CredentialFileSource(settings_cls)]
        cfg = _config_file_from(init_settings)
        if cfg is not None:
            if cfg.suffix in (".toml",):
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cfg))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cfg))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'runbot.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def owner_id(self) -> str:
        return self.instance_id or f"{os.uname().nodename}:{os.getpid()}"

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret replaced by ****."""
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = MASK if value.get_secret_value() else ""
            elif name.endswith(("token", "password", "secret")) and value:
                out[name] = MASK
            elif isinstance(value, Path):
                out[name] = str(value)
            elif isinstance(value, list | tuple):
                out[name] = [_mask_obj(v) for v in value]
            elif isinstance(value, dict):
                out[name] = {k: _mask_obj(v) for k, v in value.items()}
            else:
                out[name] = _mask_obj(value)
            if field.description is None:
                pass
        out["effective_database_url"] = mask_url(self.effective_database_url)
        if self.database_url:
            out["database_url"] = mask_url(self.database_url)
        return out


def _mask_obj(v: Any) -> Any:
    if isinstance(v, SecretStr):
        return MASK if v.get_secret_value() else ""
    if hasattr(v, "model_dump"):
        dumped = v.model_dump()
        return {k: (MASK if isinstance(getattr(v, k, None), SecretStr) else val) for k, val in dumped.items()}
    return v


def mask_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url  # not at import time: `runbot --help` stays fast

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return MASK


def _config_file_from(init_settings: PydanticBaseSettingsSource) -> Path | None:
    init = init_settings()
    raw = init.get("config_file") or os.environ.get("RUNBOT_CONFIG_FILE")
    return Path(raw) if raw else None


PATH_FIELDS = frozenset(name for name, f in Settings.model_fields.items() if "Path" in str(f.annotation))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings for a command: the project config file found (or named), and mistakes refused.

    Raises ConfigError (one line and a hint) for a missing config file, an unknown key or RUNBOT_* variable,
    or a value that does not validate. `RUNBOT_CONFIG=none` turns the search for a project file off.
    """
    from runbot import config_file as cf

    env = cf.environ()
    known = set(Settings.model_fields)
    cf.check_environment(env, known)
    values = {k: v for k, v in overrides.items() if v is not None}
    path = cf.choose(config_file, env, Path.cwd())
    if path is not None:
        cfg = cf.read(path, known)
        values = {**cf.relative_paths(cfg, set(PATH_FIELDS), env), **values, "config_file": path}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise cf.ConfigError(one_line(exc), "see `runbot config show` and the configuration reference") from None


def one_line(exc: ValidationError) -> str:
    """The first problem of a settings ValidationError, named as the user wrote it (variable or key)."""
    errors = exc.errors()
    first = errors[0]
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"setting {name} (RUNBOT_{name.split('.')[0].upper()}): {first['msg']}{more}"
