"""Dynamic-credential leases that live exactly as long as the run that asked for them.

Why it is built this way:

- **Tracked before use.** A lease is written to `vault_leases` (with an audit event) before the step gets
  the credentials, so even a crash right afterwards leaves a record someone will act on.
- **Values only in memory.** The table holds the lease id, path, TTL and state; the credential values stay in
  this process (`HeldLease.values`) and are resolved into a later step's parameters at the last moment
  through `⟦secret:lease:<lease_id>#key⟧` placeholders. They are never stored in clear, anywhere.
- **Renewed while the run needs it.** One background thread renews each held lease after a fraction of its
  TTL, until the run ends or Vault caps the lease at its max TTL (then it simply expires on time).
- **Revoked when the run is over**, whichever way it ends: the engine's run-end hook queues the run, and a
  periodic sweep revokes every unrevoked lease whose run is terminal (runs cancelled while parked, runs
  finished by another process, runs that were over when a crashed process restarts). A failed revocation
  (Vault down) is recorded and retried by the next sweep. On clean shutdown the held leases are revoked
  too: their values existed only in this process, so nothing can use them afterwards.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from sqlalchemy import insert, select, update

from runbot.audit import log as audit
from runbot.domain import TERMINAL_RUN
from runbot.observability import count_vault_failure
from runbot.store import tables
from runbot.store.types import utcnow

if TYPE_CHECKING:
    from runbot.store.db import Database

log = structlog.get_logger("runbot.vault.leases")
LEASES = tables.VaultLease.__table__  # type: ignore[attr-defined]
RUNS = tables.Run.__table__  # type: ignore[attr-defined]
SHUTDOWN_REASON = "runbot instance stopped; the credentials lived only in its memory"


class LeaseUnavailable(Exception):
    """A lease's values cannot be handed out; `reason` says why (never a value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LeaseAPI(Protocol):
    """What the keeper needs from Vault. Failures raise; `.reason` and `.retryable` are used when present."""

    def renew_lease(self, lease_id: str, increment: int) -> tuple[int, bool]: ...

    def revoke_lease(self, lease_id: str) -> None: ...


@dataclass
class HeldLease:
    lease_id: str
    run_id: str
    step_id: str
    path: str
    values: dict[str, str] = field(repr=False)
    ttl: int
    increment: int  # asked for at each renewal: the lease's first TTL
    renewable: bool
    renew: bool  # the step wants it renewed while the run lives
    granted_at: float  # time.monotonic() of the last grant
    expires_at: datetime
    dead: str | None = None  # why the values no longer work (renewal refused, revoked)
    retry_at: float | None = None  # a failed renewal is tried again at this monotonic time

    def renew_due(self, fraction: float) -> float | None:
        if not (self.renew and self.renewable) or self.dead or self.ttl <= 0:
            return None
        return self.retry_at if self.retry_at is not None else self.granted_at + self.ttl * fraction


def _reason(exc: BaseException) -> tuple[str, bool]:
    return str(getattr(exc, "reason", "") or type(exc).__name__), bool(getattr(exc, "retryable", True))


class LeaseKeeper:
    """Tracks, renews and revokes the leases of runs; one daemon thread per process."""

    def __init__(self, db: Database, api: LeaseAPI, *, holder: str, renew_fraction: float = 0.67,
                 sweep_interval: float = 30.0) -> None:  # fmt: skip
        self.db = db
        self.api = api
        self.holder = holder
        self.fraction = renew_fraction
        self.sweep_interval = sweep_interval
        self._held: dict[str, HeldLease] = {}
        self._ended: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_sweep = 0.0
        self.stats = {"renewals": 0, "revocations": 0, "sweeps": 0, "errors": 0}

    # ---- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the upkeep thread (idempotent); its first pass sweeps leases of runs already over."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name="runbot-vault-leases", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread, revoke what ended runs and this process still hold; never block shutdown for long."""
        self._halt()
        try:
            self._revoke_ended()
        except Exception as exc:
            log.warning("revoking leases of ended runs at shutdown failed; the next start sweeps them", error=str(exc))
        with self._lock:
            held = list(self._held.values())
        for h in held:
            ok, retryable = self._revoke(h.lease_id, h.run_id, SHUTDOWN_REASON)
            if not ok and retryable:  # Vault unreachable: do not wait for every remaining lease in turn
                log.warning("vault unreachable at shutdown; remaining leases expire at their TTL or are swept later",
                            remaining=len(held))  # fmt: skip
                break
        with self._lock:
            self._held.clear()

    def abandon(self) -> None:
        """Stop without revoking anything (a simulated crash, for recovery tests)."""
        self._halt()
        with self._lock:
            self._held.clear()

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    # ---- tracking -----------------------------------------------------------------------------------------

    def track(self, lease: HeldLease) -> None:
        """Record the lease (and an audit event) before anyone uses its values; then keep it alive."""
        now = utcnow()
        with self.db.tx() as conn:
            conn.execute(insert(LEASES).values(
                lease_id=lease.lease_id, run_id=lease.run_id, step_id=lease.step_id, path=lease.path,
                holder=self.holder, renewable=lease.renewable, ttl_seconds=lease.ttl, renewals=0, issued_at=now,
                expires_at=lease.expires_at))  # fmt: skip
            audit.append(conn, [audit.Event("vault.lease_issued", run_id=lease.run_id, step_id=lease.step_id,
                                            outcome="issued", details={"lease_id": lease.lease_id,
                                                                       "path": lease.path, "ttl": lease.ttl,
                                                                       "renewable": lease.renewable})])  # fmt: skip
        with self._lock:
            self._held[lease.lease_id] = lease
        self.start()
        self._wake.set()

    def values(self, lease_id: str) -> dict[str, str]:
        with self._lock:
            h = self._held.get(lease_id)
        if h is not None:
            if h.dead:
                raise LeaseUnavailable(h.dead)
            return dict(h.values)
        with self.db.read() as conn:
            row = conn.execute(select(LEASES).where(LEASES.c.lease_id == lease_id)).mappings().first()
        if row is None:
            raise LeaseUnavailable("unknown lease (not issued by a vault.credentials step of runbot)")
        if row["revoked_at"] is not None:
            raise LeaseUnavailable(f"the lease was revoked at {row['revoked_at']:%Y-%m-%d %H:%M:%S}Z: {row['revoke_reason']}")
        if row["holder"] != self.holder:
            raise LeaseUnavailable(f"its credentials are held in the memory of runbot instance {row['holder']}, not "
                                   "this one (the run moved after a restart); run the credentials step again")  # fmt: skip
        raise LeaseUnavailable("its credentials are no longer in memory (runbot restarted since they were issued)")

    def held(self) -> list[HeldLease]:
        with self._lock:
            return list(self._held.values())

    def run_ended(self, run_id: str) -> None:
        """Engine hook: the run is over; revoke its leases soon (in the keeper thread, not the engine loop)."""
        with self._lock:
            self._ended.add(run_id)
            running = self._thread is not None
        if running:
            self._wake.set()

    # ---- the upkeep thread ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            try:
                if now >= self._next_sweep:
                    self.sweep()
                    self._next_sweep = time.monotonic() + self.sweep_interval
                self._revoke_ended()
                self._renew_due()
            except Exception as exc:  # the database may be busy; never let the thread die
                self.stats["errors"] += 1
                log.error("lease upkeep failed; retrying", error=f"{type(exc).__name__}: {exc}")
                self._wake.wait(1.0)
                continue
            dues = [d for d in (h.renew_due(self.fraction) for h in self.held()) if d is not None]
            nxt = min([self._next_sweep, *dues])
            self._wake.wait(max(0.02, nxt - time.monotonic()))

    def sweep(self) -> int:
        """Revoke every unrevoked lease whose run is over (or gone); returns how many were revoked."""
        terminal = [s.value for s in TERMINAL_RUN]
        with self.db.read() as conn:
            rows = conn.execute(
                select(LEASES.c.lease_id, LEASES.c.run_id, RUNS.c.status)
                .select_from(LEASES.outerjoin(RUNS, RUNS.c.id == LEASES.c.run_id))
                .where(LEASES.c.revoked_at.is_(None), RUNS.c.status.in_(terminal) | RUNS.c.id.is_(None))
            ).all()
        self.stats["sweeps"] += 1
        done = 0
        for r in rows:
            ok, retryable = self._revoke(r.lease_id, r.run_id, f"run is over ({r.status or 'deleted'})")
            done += ok
            if not ok and retryable:
                break  # Vault is unreachable; the next sweep tries again
        return done

    def _revoke_ended(self) -> None:
        with self._lock:
            ended, self._ended = self._ended, set()
        if not ended:
            return
        with self.db.read() as conn:
            rows = conn.execute(
                select(LEASES.c.lease_id, LEASES.c.run_id, RUNS.c.status)
                .select_from(LEASES.outerjoin(RUNS, RUNS.c.id == LEASES.c.run_id))
                .where(LEASES.c.run_id.in_(sorted(ended)), LEASES.c.revoked_at.is_(None))
            ).all()
        for r in rows:
            self._revoke(r.lease_id, r.run_id, f"run ended ({r.status})")

    def _revoke(self, lease_id: str, run_id: str, reason: str) -> tuple[bool, bool]:
        with self._lock:
            h = self._held.pop(lease_id, None)  # the run is over: forget the values whatever Vault says
        if h is not None:
            h.dead = f"the lease was revoked: {reason}"
        try:
            self.api.revoke_lease(lease_id)
        except Exception as exc:
            why, retryable = _reason(exc)
            self.stats["errors"] += 1
            count_vault_failure("lease_revoke")
            log.warning("lease revocation failed; the sweep retries", lease_id=lease_id, run_id=run_id, reason=why)
            self._record_error(lease_id, f"revocation failed: {why}")
            return False, retryable
        now = utcnow()
        with self.db.tx() as conn:
            res = conn.execute(update(LEASES).where(LEASES.c.lease_id == lease_id, LEASES.c.revoked_at.is_(None))
                               .values(revoked_at=now, revoke_reason=reason, last_error=None))  # fmt: skip
            if res.rowcount:
                audit.append(conn, [audit.Event("vault.lease_revoked", run_id=run_id, outcome="revoked",
                                                details={"lease_id": lease_id, "reason": reason})])  # fmt: skip
        self.stats["revocations"] += 1
        log.info("lease revoked", lease_id=lease_id, run_id=run_id, reason=reason)
        return True, False

    def _renew_due(self) -> None:
        now = time.monotonic()
        for h in self.held():
            due = h.renew_due(self.fraction)
            if due is None or now < due:
                continue
            try:
                ttl, renewable = self.api.renew_lease(h.lease_id, h.increment)
            except Exception as exc:
                why, retryable = _reason(exc)
                remaining = h.granted_at + h.ttl - now
                self.stats["errors"] += 1
                count_vault_failure("lease_renew")
                if retryable and remaining > 0:
                    h.retry_at = now + min(5.0, max(0.2, remaining / 4))
                    log.warning("lease renewal failed; retrying", lease_id=h.lease_id, reason=why)
                    self._record_error(h.lease_id, f"renewal failed (retrying): {why}")
                else:
                    h.dead = f"the lease could not be renewed: {why}"
                    log.error("lease renewal failed for good", lease_id=h.lease_id, run_id=h.run_id, reason=why)
                    self._record_error(h.lease_id, f"renewal failed: {why}", audit_run=h.run_id)
                continue
            h.retry_at = None
            h.granted_at, h.ttl, h.renewable = time.monotonic(), ttl, renewable
            h.expires_at = utcnow() + timedelta(seconds=ttl)
            if ttl < h.increment * 0.9:  # Vault capped it: the max TTL is near and renewing cannot extend it
                h.renew = False
                log.info("lease reached its max TTL and expires on time", lease_id=h.lease_id, ttl=ttl)
            self.stats["renewals"] += 1
            with self.db.tx() as conn:
                conn.execute(update(LEASES).where(LEASES.c.lease_id == h.lease_id).values(
                    ttl_seconds=ttl, renewable=renewable, expires_at=h.expires_at, last_renewed_at=utcnow(),
                    renewals=LEASES.c.renewals + 1, last_error=None))  # fmt: skip

    def _record_error(self, lease_id: str, error: str, audit_run: str | None = None) -> None:
        try:
            with self.db.tx() as conn:
                conn.execute(update(LEASES).where(LEASES.c.lease_id == lease_id).values(last_error=error[:1000]))
                if audit_run is not None:
                    audit.append(conn, [audit.Event("vault.lease_lost", run_id=audit_run, outcome="failed",
                                                    details={"lease_id": lease_id, "error": error})])  # fmt: skip
        except Exception as exc:
            log.warning("could not record a lease error", lease_id=lease_id, error=type(exc).__name__)


# ---- reading for humans ---------------------------------------------------------------------------------------


def lease_rows(db: Database, run_id: str) -> list[dict[str, Any]]:
    with db.read() as conn:
        return [dict(r) for r in conn.execute(select(LEASES).where(LEASES.c.run_id == run_id)
                                              .order_by(LEASES.c.id)).mappings()]  # fmt: skip


def lease_state(row: dict[str, Any], now: datetime | None = None) -> str:
    if row["revoked_at"] is not None:
        return f"revoked {row['revoked_at']:%H:%M:%S} ({row['revoke_reason']})"
    if row["expires_at"] is not None and row["expires_at"] <= (now or utcnow()):
        return "expired"
    return "active"


def lease_lines(db: Database, run_id: str) -> list[str]:
    """`runbot runs show` section: lease id, path, TTL and state; never a value."""
    rows = lease_rows(db, run_id)
    if not rows:
        return []
    out = ["", "vault leases:"]
    for r in rows:
        expires = f"{r['expires_at']:%Y-%m-%d %H:%M:%S}Z" if r["expires_at"] else "-"
        out.append(f"  {r['lease_id']}  step {r['step_id']}  ttl {r['ttl_seconds']}s  expires {expires}  "
                   f"renewals {r['renewals']}  {lease_state(r)}")  # fmt: skip
        if r["last_error"]:
            out.append(f"    last error: {r['last_error']}")
    return out
