"""Publishing the chain head on a schedule, so a copy of it lives outside the database (anchoring).

Whoever can write the database can rebuild the unkeyed chain, head included; they cannot take back a head
already sent elsewhere. Every RUNBOT_AUDIT_HEAD_PUBLISH_INTERVAL seconds `serve` reads the head and sends
it to each configured target:

- the log: one line `runbot audit head: SEQ HASH` (ship logs off the host and it is anchored there);
- a Slack channel, through the outbox (delivered, retried and never sent twice like every Slack message);
- a webhook: a JSON POST `{"seq", "hash", "at", "instance", "text"}` through the outbound HTTP policy
  (RUNBOT_HTTP_ALLOW_HOSTS / _CIDRS, the addresses pinned as for `http.request`), no redirects followed.

Any of these, saved later, is a valid `runbot audit verify --head-file`. A target that fails is logged
and tried again at the next round; the others are not held up.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from sqlalchemy import insert

from runbot.audit.records import chain_head, iso
from runbot.engine.state import OUTBOX
from runbot.netpolicy import NetPolicy, PolicyError, ResolveError, ip_literal
from runbot.store.types import utcnow
from runbot.worker import WorkerThread

if TYPE_CHECKING:
    from runbot.app import Runtime
    from runbot.settings import Settings

log = structlog.get_logger("runbot.audit.head")
TOPIC = "audit.head"
WEBHOOK_TIMEOUT = 10.0


@dataclass(frozen=True)
class Publication:
    seq: int
    hash: str
    at: str
    instance: str

    @property
    def text(self) -> str:
        return f"runbot audit head: {self.seq} {self.hash}"

    def body(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "at": self.at, "instance": self.instance, "text": self.text}


def targets(settings: Settings) -> list[str]:
    """The configured targets, in the order they are served."""
    out = ["log"] if settings.audit_head_publish_log else []
    if settings.audit_head_publish_slack_channel:
        out.append("slack")
    if settings.audit_head_publish_webhook_url:
        out.append("webhook")
    return out


def check_webhook(settings: Settings) -> str | None:
    """Why the webhook URL is refused by the outbound policy (at start, so a typo shows at once), or None."""
    url = settings.audit_head_publish_webhook_url
    if not url:
        return None
    try:
        NetPolicy.from_settings(settings).check_url(url)
    except PolicyError as exc:
        return f"RUNBOT_AUDIT_HEAD_PUBLISH_WEBHOOK_URL: {exc}"
    return None


class HeadPublisher(WorkerThread):
    """One small worker of `serve`: the head, every interval, to the log, Slack (outbox) and a webhook."""

    thread_name = "runbot-audit-head"

    def __init__(self, rt: Runtime, logger: Any = None) -> None:
        super().__init__()
        self.rt = rt
        self.log = logger or log  # the log target writes here
        s = rt.settings
        assert s.audit_head_publish_interval is not None
        self.interval = s.audit_head_publish_interval
        self.policy = NetPolicy.from_settings(s)
        self._ssl = ssl.create_default_context()
        if s.http_ca_file is not None:
            self._ssl.load_verify_locations(cafile=str(s.http_ca_file))
        self.published = 0  # rounds completed (tests and metrics read it)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.publish_once()

    def publish_once(self) -> dict[str, str | None]:
        """Publish the current head to every target; returns target -> problem (None: sent)."""
        seq, digest = chain_head(self.rt.db)
        pub = Publication(seq, digest, iso(utcnow()), self.rt.settings.owner_id)
        results: dict[str, str | None] = {}
        for target in targets(self.rt.settings):
            try:
                getattr(self, f"_to_{target}")(pub)
                results[target] = None
            except Exception as exc:  # one target's trouble never stops the others
                results[target] = f"{type(exc).__name__}: {exc}"
                self.log.warning("audit head not published", target=target, seq=seq, error=results[target])
        self.published += 1
        return results

    # ---- targets ---------------------------------------------------------------------------------------------

    def _to_log(self, pub: Publication) -> None:
        self.log.info(pub.text, seq=pub.seq, hash=pub.hash, instance=pub.instance)

    def _to_slack(self, pub: Publication) -> None:
        if not self.rt.engine.outbox_enabled:
            raise RuntimeError("Slack is not configured (RUNBOT_SLACK_BOT_TOKEN): nothing delivers the outbox")
        now = utcnow()
        payload = {**pub.body(), "channel": self.rt.settings.audit_head_publish_slack_channel}
        with self.rt.db.tx() as conn:
            conn.execute(insert(OUTBOX).values(topic=TOPIC, run_id=None, payload=payload, created_at=now,
                                               next_attempt_at=now))  # fmt: skip

    def _to_webhook(self, pub: Publication) -> None:
        asyncio.run(self._post(pub))

    async def _post(self, pub: Publication) -> None:
        s = self.rt.settings
        assert s.audit_head_publish_webhook_url is not None
        url = httpx.URL(s.audit_head_publish_webhook_url)
        target = self.policy.check_url(url)
        try:
            addrs = await self.policy.resolve(target.host, target.port, timeout=WEBHOOK_TIMEOUT)
        except ResolveError as exc:
            raise RuntimeError(str(exc)) from None
        headers = {"Content-Type": "application/json", "User-Agent": s.http_user_agent, "Host": url.netloc.decode("ascii")}
        if s.audit_head_publish_webhook_token is not None:
            headers["Authorization"] = f"Bearer {s.audit_head_publish_webhook_token.get_secret_value()}"
        literal = ip_literal(target.host) is not None
        extensions = {"sni_hostname": target.host} if url.scheme == "https" and not literal else {}
        content = json.dumps(pub.body()).encode()
        async with httpx.AsyncClient(verify=self._ssl, trust_env=False, follow_redirects=False,
                                     timeout=WEBHOOK_TIMEOUT) as client:  # fmt: skip
            last: Exception | None = None
            for ip in addrs:  # pinned: the checked address, not a second DNS answer
                pinned = url if literal else url.copy_with(host=ip.compressed)
                try:
                    resp = await client.post(pinned, content=content, headers=headers, extensions=extensions)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    last = exc
                    continue
                if not 200 <= resp.status_code < 300:
                    raise RuntimeError(f"the webhook answered HTTP {resp.status_code}")
                return
            raise RuntimeError(f"cannot connect to the webhook: {last}")


def install(rt: Runtime) -> HeadPublisher | None:
    """Join `serve`'s background workers when an interval is set; refuse a webhook the policy would refuse."""
    s = rt.settings
    if s.audit_head_publish_interval is None:
        return None
    problem = check_webhook(s)
    if problem is not None:
        raise ValueError(problem)
    publisher = HeadPublisher(rt)
    rt.background.append(publisher.start)
    rt.stoppers.append(publisher.stop)
    log.info("audit head publication on", every_seconds=s.audit_head_publish_interval, targets=targets(s))
    return publisher
