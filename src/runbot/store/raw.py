"""A thin DBAPI path for the engine's hot writes.

SQLAlchemy Core costs ~100 µs per statement in Python; a step commit issues five. The journal, run-fence and
audit writes therefore go straight to the driver cursor inside the SQLAlchemy transaction, with values
stored exactly as the SQLAlchemy column types would store them (so reads through SQLAlchemy see the same).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection

_PLAIN = frozenset({str, int, float, bool, bytes})
_NAMED = re.compile(r":([a-z_][a-z0-9_]*)")


@lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


class Raw:
    """Executes `:name`-style SQL on the transaction's own DBAPI connection."""

    def __init__(self, conn: Connection | Raw | None = None, *, dbapi: Any = None, sqlite: bool = True) -> None:
        self.sqlite: bool
        self.cur: Any
        self.dbapi: Any
        # (seq, hash) of the audit head, when the caller already read (and locked) it in this transaction
        self.audit_head: tuple[int, str] | None = None
        self.audit_rows: list[dict[str, Any]] = []  # what this transaction appended to the audit chain
        if isinstance(conn, Raw):  # already raw: share its cursor
            self.sqlite, self.cur, self.dbapi = conn.sqlite, conn.cur, conn.dbapi
            self.audit_head = conn.audit_head
        elif conn is not None:
            self.sqlite = conn.dialect.name == "sqlite"
            self.dbapi = conn.connection.dbapi_connection
            self.cur = self.dbapi.cursor()
        else:
            self.sqlite, self.dbapi = sqlite, dbapi
            self.cur = dbapi.cursor()
        if not self.sqlite:
            from psycopg.types.json import Json

            self._json = Json

    def adapt(self, v: Any) -> Any:
        if v is None or v.__class__ in _PLAIN:
            return v
        if isinstance(v, datetime):
            if v.tzinfo is None:
                raise ValueError("naive datetime")
            if self.sqlite:
                return v.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
            return v
        if isinstance(v, dict | list):
            return json.dumps(v) if self.sqlite else self._json(v)
        return v

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: self.adapt(v) for k, v in params.items()}

    def execute(self, sql: str, params: dict[str, Any]) -> Any:
        self.cur.execute(sql if self.sqlite else _pg_sql(sql), self._params(params))
        return self.cur

    def send(self, sql: str, params: dict[str, Any]) -> Any:
        """Execute on a cursor of its own: in PostgreSQL pipeline mode the result is fetched later,
        so several statements share one round trip."""
        cur = self.dbapi.cursor()
        cur.execute(sql if self.sqlite else _pg_sql(sql), self._params(params))
        return cur

    def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        self.cur.executemany(sql if self.sqlite else _pg_sql(sql), [self._params(r) for r in rows])

    def insert(self, table: str, row: dict[str, Any]) -> None:
        cols = list(row)
        self.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})", row)

    def insert_many(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = list(rows[0])
        self.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})", rows)

    def update(self, table: str, values: dict[str, Any], where: str, params: dict[str, Any]) -> int:
        sets = ", ".join(f"{k} = :v_{k}" for k in values)
        both = {**{f"v_{k}": v for k, v in values.items()}, **params}
        return int(self.execute(f"UPDATE {table} SET {sets} WHERE {where}", both).rowcount)
