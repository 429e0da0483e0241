"""`invigilator db distribute`: shard the schema over a Citus cluster (docs/scaling.md).

Every table a session owns is distributed by `candidate_id` in one co-location group, so each
operation on one candidate stays on one shard group (one node, no two-phase commit);
`webhook_endpoint` is a reference table (every node holds it, for the outbox trigger). All of
it in one transaction: distributing one table at a time would leave, between two steps, a local
table with a foreign key to a distributed one, which Citus accepts and every insert then fails.
The statements are the named blocks of sql/citus.sql.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from invigilator import sql
from invigilator.db import migrate
from invigilator.domain import SchemaProblem

Q = sql.citus_queries()


@dataclass(frozen=True)
class Placement:
    """How one table should be placed: `distributed` (co-located with `colocate_with`) or
    `reference`."""

    table: str
    kind: str
    colocate_with: str = "default"


#: In order: a referenced table before the tables that reference it.
PLAN = (
    Placement("candidate", "distributed"),
    Placement("test_session", "distributed", "candidate"),
    Placement("test_session_event", "distributed", "test_session"),
    Placement("test_session_answer", "distributed", "test_session"),
    Placement("test_session_answer_unsynced", "distributed", "test_session"),
    Placement("test_session_page", "distributed", "test_session"),
    Placement("test_session_incident", "distributed", "test_session"),
    Placement("test_session_answer_total", "distributed", "test_session"),
    Placement("webhook_endpoint", "reference"),
    Placement("webhook_delivery", "distributed", "test_session"),
)
TABLES = [p.table for p in PLAN]


@dataclass(frozen=True)
class Found:
    kind: str  # distributed | reference | local (not in Citus's metadata)
    column: str | None
    colocation_id: int | None
    shard_count: int | None


@dataclass(frozen=True)
class Distribution:
    citus_version: str | None  # None: not a Citus database
    tables: dict[str, Found]

    @property
    def is_citus(self) -> bool:
        return self.citus_version is not None

    @property
    def distributed(self) -> bool:
        """Every table placed as PLAN says (co-location checked by `problems`)."""
        return self.is_citus and not any(self.tables[p.table].kind == "local" for p in PLAN)

    @property
    def untouched(self) -> bool:
        """A Citus database whose tables are all still local to the coordinator."""
        return all(self.tables[p.table].kind == "local" for p in PLAN)

    def problems(self) -> list[str]:
        """What differs from PLAN, for a database that is (partly) distributed."""
        found: list[str] = []
        group = self.tables["candidate"].colocation_id
        for p in PLAN:
            got = self.tables[p.table]
            if got.kind != p.kind:
                found.append(f"{p.table} is {got.kind}, not {p.kind}")
            elif p.kind == "distributed" and got.column != "candidate_id":
                found.append(f"{p.table} is distributed by {got.column}, not candidate_id")
            elif p.kind == "distributed" and got.colocation_id != group:
                found.append(f"{p.table} is not co-located with candidate")
        return found


def inspect(conn: psycopg.Connection[Any]) -> Distribution:
    row = conn.execute(Q["citus_version"]).fetchone()
    if row is None:
        return Distribution(None, {t: Found("local", None, None, None) for t in TABLES})
    tables = {t: Found("local", None, None, None) for t in TABLES}
    with conn.cursor(row_factory=dict_row) as cur:
        for r in cur.execute(Q["citus_tables"], {"tables": TABLES}).fetchall():
            kind = "distributed" if r["kind"] == "distributed" else r["kind"]
            column = r["column_name"] if r["column_name"] not in (None, "<none>") else None
            tables[r["table_name"]] = Found(kind, column, r["colocation_id"], r["shard_count"])
    return Distribution(str(row[0]), tables)


def distribute(conninfo: str, *, echo: Callable[[str], None] = lambda _: None) -> list[str]:
    """Distribute what is not yet distributed (idempotent); returns the tables placed now."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        state = inspect(conn)
        if not state.is_citus:
            raise SchemaProblem(
                "this database has no citus extension: `db distribute` needs a Citus "
                "coordinator (CREATE EXTENSION citus, and worker nodes added)"
            )
        todo = migrate.pending(conn)
        if todo:
            raise SchemaProblem(
                f"{len(todo)} migration(s) pending: run `invigilator db upgrade` first"
            )
        if state.distributed:
            problems = state.problems()
            if problems:
                raise SchemaProblem("distributed differently: " + "; ".join(problems))
            return []
        wrong = [
            f"{p.table} is {state.tables[p.table].kind}"
            for p in PLAN
            if state.tables[p.table].kind not in ("local", p.kind)
        ]
        if wrong:
            raise SchemaProblem("cannot distribute: " + "; ".join(wrong))
        (workers,) = conn.execute(Q["worker_count"]).fetchone() or (0,)
        if not workers:
            raise SchemaProblem(
                "no worker node holds shards: add workers with citus_add_node() first"
            )
        placed = []
        with conn.transaction():
            conn.execute(Q["allow_triggers"])
            conn.execute(Q["sequential"])
            if state.tables["test_session"].kind == "local":
                conn.execute(Q["drop_rollup"])
            relink = state.tables["webhook_endpoint"].kind == "local"
            if relink:
                conn.execute(Q["drop_endpoint_fk"])
            for p in PLAN:
                if state.tables[p.table].kind == p.kind:
                    continue
                if p.kind == "reference":
                    conn.execute(Q["create_reference_table"], {"table": p.table})
                else:
                    conn.execute(
                        Q["create_distributed_table"],
                        {"table": p.table, "colocate_with": p.colocate_with},
                    )
                placed.append(p.table)
                echo(f"{p.kind} {p.table}")
            if relink:
                conn.execute(Q["add_endpoint_fk"])
        return placed
