"""A step commit on PostgreSQL in one round trip: one statement plus COMMIT, pipelined.

The general path reads (and locks) the audit head, then writes: two round trips, and on a loopback
connection each costs about as much as all the Python of a step. Here the audit rows are chained onto a
head cached in this process, and a single statement of data-modifying CTEs checks it and writes it all:

  hc  locks the head row only if it still is the cached (seq, hash)
  f   the fenced run update, only if hc found the head (and our lease and fence still hold)
  ... journal, artifacts, timers, outbox, audit rows and the head move, each only if f updated the run

so either everything is written or nothing is (a stale head or a lost lease leaves the transaction empty),
and the statement's one result row says which. A stale head (another process or connection appended) sends
the commit down the general path, which refreshes the cache. The process-wide lock around a cached-head
commit serializes what the head row lock serializes anyway, for one round trip instead of two.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy.dialects import postgresql

from runbot.store import tables


@lru_cache(maxsize=32)
def _casts(table: str) -> dict[str, str]:
    dialect = postgresql.dialect()
    return {c.name: c.type.compile(dialect=dialect) for c in tables.SQLModel.metadata.tables[table].columns}


class Statement:
    """Builds the one statement; `:name` parameters, so Raw binds and adapts them as usual."""

    def __init__(self) -> None:
        self.ctes: list[str] = []
        self.params: dict[str, Any] = {}

    def insert(self, name: str, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        casts = _casts(table)
        cols = list(rows[0])
        values = ", ".join("(" + ", ".join(f"CAST(:{name}{i}_{c} AS {casts[c]})" for c in cols) + ")"
                           for i in range(len(rows)))  # fmt: skip
        self.ctes.append(f"{name} AS (INSERT INTO {table} ({', '.join(cols)}) SELECT * FROM (VALUES {values}) v "
                         "WHERE EXISTS (SELECT 1 FROM f))")  # fmt: skip
        self.params.update({f"{name}{i}_{c}": r[c] for i, r in enumerate(rows) for c in cols})

    def update(self, name: str, table: str, values: dict[str, Any], where: str, params: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = :{name}_v_{k}" for k in values)
        self.ctes.append(f"{name} AS (UPDATE {table} SET {sets} WHERE {where} AND EXISTS (SELECT 1 FROM f))")
        self.params.update({f"{name}_v_{k}": v for k, v in values.items()})
        self.params.update(params)


def step_commit(*, run_id: str, fence: int, owner: str, run_values: dict[str, Any],
                head: tuple[int, str] | None, audit_rows: list[dict[str, Any]],
                step_insert: dict[str, Any] | None, step_update: tuple[str, int, dict[str, Any]] | None,
                inserts: list[tuple[str, list[dict[str, Any]]]]) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """(sql, params) whose one result row is (fenced, cancel_requested, head_ok)."""
    st = Statement()
    guard = ""
    if audit_rows:
        assert head is not None
        st.ctes.append("hc AS (SELECT 1 FROM audit_head WHERE id = 1 AND seq = :hc_seq AND hash = :hc_hash FOR UPDATE)")
        st.params.update(hc_seq=head[0], hc_hash=head[1])
        guard = " AND EXISTS (SELECT 1 FROM hc)"
    sets = ", ".join(f"{k} = :f_v_{k}" for k in run_values)
    st.ctes.append(f"f AS (UPDATE runs SET {sets} WHERE id = :f_id AND fence = :f_fence AND lease_owner = :f_owner"
                   f"{guard} RETURNING cancel_requested)")  # fmt: skip
    st.params.update({f"f_v_{k}": v for k, v in run_values.items()})
    st.params.update(f_id=run_id, f_fence=fence, f_owner=owner)
    if step_insert is not None:
        st.insert("si", "step_executions", [step_insert])
    if step_update is not None:
        sid, attempt, vals = step_update
        st.update("su", "step_executions", vals, "run_id = :su_r AND step_id = :su_s AND attempt = :su_a",
                  {"su_r": run_id, "su_s": sid, "su_a": attempt})  # fmt: skip
    for n, (table, rows) in enumerate(inserts):
        st.insert(f"x{n}", table, rows)
    if audit_rows:
        st.insert("ae", "audit_events", audit_rows)
        st.update("ah", "audit_head", {"seq": audit_rows[-1]["seq"], "hash": audit_rows[-1]["hash"]}, "id = 1", {})
    head_ok = "EXISTS (SELECT 1 FROM hc)" if audit_rows else "true"
    sql = (f"WITH {', '.join(st.ctes)} "
           f"SELECT EXISTS (SELECT 1 FROM f), (SELECT cancel_requested FROM f), {head_ok}")  # fmt: skip
    return sql, st.params
