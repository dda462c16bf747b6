"""The database handle: engine set-up per backend, write transactions, migrations."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from runbot.store.raw import Raw

log = structlog.get_logger("runbot.store")

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_lock key serializing `alembic upgrade` across processes: any fixed bigint, ours is b"runbotdb"
MIGRATION_LOCK_KEY = int.from_bytes(b"runbotdb", "big") & 0x7FFF_FFFF_FFFF_FFFF


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None: in memory, or not SQLite)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


class HeadCache:
    """This process's last known audit head; `lock` is held across a commit that relies on it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entered by a commit whose `extra` commits again
        self.head: tuple[int, str] | None = None

    def advance(self, seq: int, hash_: str) -> None:
        """Record a head some commit wrote (a later one may already have been recorded)."""
        with self.lock:
            if self.head is None or seq > self.head[0]:
                self.head = (seq, hash_)


class Database:
    """SQLite: WAL, one writer at a time via BEGIN IMMEDIATE. PostgreSQL: row locks, several processes."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._local = threading.local()
        self.relaxed_commits = False  # PostgreSQL: see Settings.pg_async_commit_idempotent
        self._raw_lock = threading.Lock()
        self._raw_conns: list[Any] = []
        self.audit_cache = HeadCache()  # PostgreSQL: the audit head as this process last wrote it
        if self.is_sqlite:
            path = sqlite_file(url)
            if path is not None:
                private_sqlite_file(path)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=pool_size, max_overflow=20
            )
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=20, pool_pre_ping=False, pool_recycle=1800)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """A write transaction; commits on success, rolls back on any exception."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def raw_tx(self, durable: bool = True) -> Iterator[Raw]:
        """A write transaction on this thread's own long-lived DBAPI connection (the engine's hot path).

        With `relaxed_commits` on PostgreSQL the connection commits asynchronously unless `durable`."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.engine.raw_connection()
            if not self.is_sqlite:
                dbapi: Any = conn.dbapi_connection
                if self.relaxed_commits:
                    # the engine's own connection: commits default to asynchronous; a durable raw_tx opts back in
                    dbapi.cursor().execute("SET synchronous_commit = off")
                    dbapi.commit()
                # Pipeline mode for the connection's whole life: statements go out without waiting and results
                # are read when needed (a commit is the one round trip). Leaving pipeline mode after every
                # transaction would cost a round trip of its own.
                pipeline = dbapi.pipeline()
                pipeline.__enter__()
                conn.info["runbot_pipeline"] = pipeline  # left before the connection closes (see _close_raw)
            self._local.conn = conn
            with self._raw_lock:
                self._raw_conns.append(conn)
        raw = Raw(dbapi=conn.dbapi_connection, sqlite=self.is_sqlite)
        try:
            if self.is_sqlite:
                raw.cur.execute("BEGIN IMMEDIATE")
            elif durable and self.relaxed_commits:
                raw.cur.execute("SET LOCAL synchronous_commit = on")  # pipelined: no round trip of its own
            yield raw
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # the connection itself is broken: drop it, the next call opens a new one
                self._local.conn = None
                with self._raw_lock:
                    if conn in self._raw_conns:
                        self._raw_conns.remove(conn)
                _close_raw(conn, invalidate=True)
            raise

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction; on SQLite a deferred one, so readers never hold the write lock."""
        with self.engine.connect().execution_options(runbot_readonly=True) as conn:
            yield conn
            conn.rollback()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # ---- migrations --------------------------------------------------------------------------------------

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["engine"] = self.engine
        return cfg

    def upgrade(self) -> None:
        """Bring the schema to head (idempotent; safe on every start)."""
        if self.is_sqlite:
            # SQLite migrations may rebuild tables; use a fresh non-pooled engine to avoid stale connections.
            eng = create_engine(self.url, poolclass=NullPool)
            event.listen(eng, "connect", _sqlite_on_connect)
            cfg = self.alembic_config()
            cfg.attributes["engine"] = eng
            command.upgrade(cfg, "head")
            eng.dispose()
        else:
            self._upgrade_postgresql()

    def _upgrade_postgresql(self) -> None:
        """Replicas starting together on one database: the first to take the advisory lock migrates, the
        others wait for it, then see the schema at head and do nothing (alembic itself has no such lock)."""
        head = self.head_revision()
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()  # the lock belongs to the session; the migration runs in transactions of its own
            try:
                current = MigrationContext.configure(conn).get_current_revision()  # read after the lock
                if current == head:
                    conn.rollback()
                    return
                conn.rollback()
                log.info("migrating the database schema", from_revision=current, to_revision=head)
                cfg = self.alembic_config()
                cfg.attributes["connection"] = conn  # the locked session migrates (see migrations/env.py)
                command.upgrade(cfg, "head")
            finally:
                with contextlib.suppress(Exception):  # a broken session has dropped the lock with it
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    conn.commit()

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def at_head(self) -> bool:
        return self.current_revision() == self.head_revision()

    def dispose(self) -> None:
        with self._raw_lock:
            conns, self._raw_conns = self._raw_conns, []
        for c in conns:
            _close_raw(c)
        self.engine.dispose()


def private_sqlite_file(path: Path) -> None:
    """The SQLite database readable and writable by this user only, whatever the umask.

    The database holds step outputs, approvals and the audit trail. Directories runbot creates for it are 0700
    and the file is created 0600 before SQLite opens it; SQLite gives the -wal and -shm files it creates the
    database file's mode (it fchmods them past the umask). A file or its -wal/-shm left group- or
    world-readable by an earlier version is tightened (if it is ours).
    """
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)  # mkdir's mode passes through the umask
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(path, 0o600)
    except FileExistsError:
        pass
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            st = f.stat()
            if st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.chmod(f, st.st_mode & 0o700)


def _close_raw(conn: Any, invalidate: bool = False) -> None:
    pipeline = conn.info.pop("runbot_pipeline", None)
    if pipeline is not None:
        with contextlib.suppress(Exception):  # a broken connection cannot leave pipeline mode cleanly
            pipeline.__exit__(None, None, None)
    with contextlib.suppress(Exception):  # already closed by its thread
        conn.invalidate() if invalidate else conn.close()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    readonly = conn.get_execution_options().get("runbot_readonly", False)
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")
