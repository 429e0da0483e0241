"""Schema migrations: numbered SQL files applied in order, each in its own transaction,
serialized across processes by a PostgreSQL advisory lock, recorded in a tracking table.

Why not a migration library: the same files must also run as one plain `psql` script
(`invigilator db sql`, test-session-table.sql) that records what it applied, so that a later
`db upgrade` knows; and every file must adopt a table made from the setup guide's own SQL.
That leaves a tracking table and a lock, about forty lines, for a library to do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from invigilator import sql
from invigilator.domain import SchemaProblem

#: The advisory lock every schema change holds: 'invi' + 'gilator' as two int4s.
LOCK_KEY = (0x696E7669, 0x67696C61)

TRACKING_TABLE_SQL = """\
CREATE TABLE IF NOT EXISTS invigilator_schema_migration (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);"""


def checksum(migration: sql.Migration) -> str:
    return hashlib.sha256(migration.sql.encode()).hexdigest()


def _record_sql(migration: sql.Migration) -> str:
    return (
        "INSERT INTO invigilator_schema_migration (version, name, checksum) VALUES "
        f"({migration.version}, '{migration.name}', '{checksum(migration)}') "
        "ON CONFLICT (version) DO NOTHING;"
    )


#: One token of SQL text that can hide a `;`: a comment, a string, a quoted name, a dollar
#: quote's opening tag; or a top-level `;`.
_SQL_TOKEN = re.compile(
    r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$|;""",
    re.S,
)
_DO_BLOCK = re.compile(r"DO\s+(\$[A-Za-z_0-9]*\$)(.*)\1\s*;?", re.S)
_SCRIPT_TAG = "$invigilator$"


def split_statements(text: str) -> list[str]:
    """The top-level statements of a SQL file, each with the comments before it (a trailing
    comment is one more item)."""
    found: list[str] = []
    start = pos = 0
    while match := _SQL_TOKEN.search(text, pos):
        piece = match.group(0)
        pos = match.end()
        if piece.startswith("$"):
            close = text.find(piece, pos)
            if close < 0:
                raise ValueError(f"unterminated dollar quote {piece}")
            pos = close + len(piece)
        elif piece == ";":
            found.append(text[start:pos])
            start = pos
    if text[start:].strip():
        found.append(text[start:])
    return found


def _as_plpgsql(statement: str) -> str:
    """One statement of a migration, as a step of the script's DO block: its comments kept, a
    DO block inlined as a nested block (an error in it then names a line, not a page of SQL),
    anything else EXECUTEd."""
    text = statement[1:] if statement.startswith("\n") else statement  # the `;` line's end
    lines = text.rstrip().splitlines()
    lead = 0
    while lead < len(lines) and (not lines[lead].strip() or lines[lead].lstrip().startswith("--")):
        lead += 1
    comments, body = lines[:lead], "\n".join(lines[lead:]).strip()
    if not body:
        return "\n".join(comments)
    do = _DO_BLOCK.fullmatch(body)
    if do and not re.search(r"\bRETURN\b", do[2], re.I):  # a RETURN would end the script
        step = do[2].strip().rstrip(";") + ";"
    else:
        tag = "$sql$"
        while tag in body:
            tag = tag[:-1] + "_$"
        step = f"EXECUTE {tag}\n{body.rstrip(';').rstrip()}\n{tag};"
    return "\n".join([*comments, step])


def schema_sql(*, create_candidate_table: bool = False) -> str:
    """The whole schema as one idempotent psql script (the content of test-session-table.sql).

    After the lock and the tracking table, everything is one statement, a DO block, so that
    psql run as the setup guide writes it (no ON_ERROR_STOP) prints the first error alone
    rather than one "current transaction is aborted" for every statement after it; COMMIT
    then rolls the whole script back. Plain SQL, no psql commands: the Azure Portal's Query
    Editor and Azure Data Studio run it as it is."""
    sources = [sql.candidate_table_sql()] if create_candidate_table else []
    steps: list[str] = []
    for text in sources:
        steps += [_as_plpgsql(s) for s in split_statements(text)]
    for migration in sql.migrations():
        if _SCRIPT_TAG in migration.sql:
            raise ValueError(f"migration {migration.version} uses the script's tag {_SCRIPT_TAG}")
        # Only what is not yet recorded, as `db upgrade` does: a migration applied before is
        # not replayed over later ones (0005's nullable key under 0012's), nor run as DDL
        # against a distributed database.
        steps.append("")
        steps.append(
            "IF NOT EXISTS (SELECT FROM invigilator_schema_migration "
            f"WHERE version = {migration.version}) THEN"
        )
        steps += [_as_plpgsql(s) for s in split_statements(migration.sql)]
        steps.append(_record_sql(migration))
        steps.append("END IF;")
    parts = [
        "-- test-session-table.sql: the Invigilator schema for psql users. Generated by",
        "-- `invigilator db sql`; do not edit by hand. Idempotent: safe to run again, and",
        "-- `invigilator db upgrade` afterwards finds nothing to do.",
        '--   psql "$DATABASE_URL" < test-session-table.sql',
        "-- Prerequisite: a candidate table with a unique candidate_id (see README).",
        "-- The migrations run as one DO block: a first error is reported alone, and nothing",
        "-- is changed. The same SQL runs as it is in the Azure Portal's Query Editor and in",
        "-- Azure Data Studio.",
        "",
        "BEGIN;",
        "-- A second run would otherwise print a NOTICE for every IF NOT EXISTS it skips.",
        "SET LOCAL client_min_messages = warning;",
        f"SELECT pg_advisory_xact_lock({LOCK_KEY[0]}, {LOCK_KEY[1]});",
        TRACKING_TABLE_SQL,
        "",
        f"DO {_SCRIPT_TAG}",
        "BEGIN",
        *steps,
        "END",
        f"{_SCRIPT_TAG};",
        "COMMIT;",
        "",
    ]
    return "\n".join(parts)


@dataclass(frozen=True)
class CandidateTableProblem:
    message: str
    fix: str


def candidate_table_problem(conn: psycopg.Connection[Any]) -> CandidateTableProblem | None:
    """The setup guide's prerequisite, checked by migration 0001's own statement (None when it
    holds): its error is the message, its hint the fix."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.candidate_prerequisite_sql())
    except psycopg.errors.RaiseException as exc:
        return CandidateTableProblem(
            exc.diag.message_primary or str(exc), exc.diag.message_hint or ""
        )
    return None


def applied_versions(conn: psycopg.Connection[Any]) -> dict[int, str]:
    if conn.execute("SELECT to_regclass('invigilator_schema_migration')").fetchone() == (None,):
        return {}
    rows = conn.execute("SELECT version, checksum FROM invigilator_schema_migration").fetchall()
    return {version: digest for version, digest in rows}


def pending(conn: psycopg.Connection[Any]) -> list[sql.Migration]:
    done = applied_versions(conn)
    return [m for m in sql.migrations() if m.version not in done]


def _is_distributed(conn: psycopg.Connection[Any]) -> bool:
    """Whether `db distribute` has sharded this database (Citus)."""
    if conn.execute("SELECT to_regclass('pg_dist_partition')").fetchone() == (None,):
        return False
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_dist_partition "
        "WHERE logicalrelid = to_regclass('test_session'))"
    ).fetchone()
    return bool(row and row[0])


def upgrade(
    conninfo: str,
    *,
    create_candidate_table: bool = False,
    echo: Callable[[str], None] = lambda _: None,
) -> list[sql.Migration]:
    """Apply pending migrations; returns what was applied. Safe to run from many processes."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", LOCK_KEY)
        try:
            # Only when missing: CREATE … IF NOT EXISTS still needs CREATE on the schema, which
            # the least-privilege role `serve` runs as has not (docs/deploy.md).
            if conn.execute("SELECT to_regclass('invigilator_schema_migration')").fetchone() == (
                None,
            ):
                conn.execute(TRACKING_TABLE_SQL)
            if create_candidate_table:
                conn.execute(sql.candidate_table_sql())
            todo = pending(conn)
            if todo:
                problem = candidate_table_problem(conn)
                if problem:
                    raise SchemaProblem(f"{problem.message}\n{problem.fix}")
            distributed = bool(todo) and _is_distributed(conn)
            for migration in todo:
                with conn.transaction():
                    if distributed:
                        # Citus refuses a multi-statement string in a distributed transaction,
                        # and a trigger on a distributed table unless told it is meant (the
                        # timeline and outbox triggers write co-located rows on the shard).
                        conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
                        conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
                        for statement in split_statements(migration.sql):
                            if _SQL_TOKEN.sub("", statement).strip():
                                conn.execute(statement)
                    else:
                        conn.execute(migration.sql)
                    conn.execute(_record_sql(migration))
                echo(f"applied {migration.version:04d}_{migration.name}")
            return todo
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", LOCK_KEY)
