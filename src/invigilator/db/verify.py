"""`invigilator db verify`: the setup guide's "Verify Table Creation" checks, as a report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from invigilator import sql
from invigilator.db import distribute, migrate


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


#: column -> (information_schema data_type, is_nullable). candidate_id follows candidate's key.
EXPECTED_COLUMNS: dict[str, tuple[str, str]] = {
    "candidate_id": ("character varying|uuid", "NO"),
    "test_start_time": ("timestamp with time zone", "NO"),
    "test_duration_minutes": ("integer", "NO"),
    "last_heartbeat": ("timestamp with time zone", "YES"),
    "last_activity": ("timestamp with time zone", "YES"),
    "status": ("character varying", "NO"),
    "completion_method": ("character varying", "YES"),
    "completed_at": ("timestamp with time zone", "YES"),
    "sections_completed": ("jsonb", "NO"),
    "pending_answers": ("jsonb", "NO"),
    "created_at": ("timestamp with time zone", "NO"),
    "updated_at": ("timestamp with time zone", "NO"),
    "extra_minutes": ("integer", "NO"),
    "deadline": ("timestamp with time zone", "NO"),
    "tab_closed_at": ("timestamp with time zone", "YES"),
    "answer_seq": ("jsonb", "NO"),
    "planned_sections": ("jsonb", "YES"),
}

EXPECTED_INDEXES = {
    "test_session_pkey": "",
    "idx_test_session_status": "(status)",
    "idx_test_session_last_heartbeat": "USING brin (last_heartbeat)",
    "idx_test_session_test_start_time": "(test_start_time)",
    "idx_test_session_active": "WHERE ((status)::text = 'active'::text)",
}

#: trigger -> the events it fires on (information_schema.triggers, one row per event).
EXPECTED_TRIGGERS = {
    "test_session_updated_at": {"UPDATE"},
    "test_session_deadline": {"INSERT", "UPDATE"},
    # Migration 0002: the webhook outbox, written in the transaction of the change.
    "test_session_webhook_started": {"INSERT"},
    "test_session_webhook_changed": {"UPDATE"},
    # Migration 0012: a session's deliveries go with it (the cascade of a foreign key that a
    # session.erased delivery's key cannot satisfy).
    "test_session_webhook_erase": {"DELETE"},
}

#: Migration 0002's tables and the constraints the service relies on, by name (the secret's
#: check as the Standard Webhooks migration redefined it, for encrypted secrets).
EXPECTED_WEBHOOK_CONSTRAINTS = {
    "webhook_endpoint": {"webhook_endpoint_pkey": "p", "webhook_endpoint_secret_present": "c"},
    "webhook_delivery": {
        "webhook_delivery_pkey": "p",
        "webhook_delivery_event_unique": "u",
        "webhook_delivery_endpoint_fk": "f",
        "webhook_delivery_erased_key": "c",
        "webhook_delivery_status_check": "c",
    },
}
EXPECTED_WEBHOOK_INDEXES = ("webhook_delivery_one_per_silence", "idx_webhook_delivery_due")

EXPECTED_CONSTRAINTS = {
    "test_session_pkey": "p",
    "test_session_candidate_fk": "f",
    "test_session_status_check": "c",
    "test_session_completion_method_check": "c",
    "test_session_status_method_check": "c",
    "test_session_duration_range": "c",
    "test_session_extra_minutes_range": "c",
    "test_session_sections_is_array": "c",
    "test_session_answers_is_object": "c",
    "test_session_answer_seq_is_object": "c",
    "test_session_planned_sections_is_array": "c",
}


def verify(conn: psycopg.Connection[Any]) -> list[Check]:
    checks: list[Check] = []

    # -- Check if table exists (the guide's first query)
    exists = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name = 'test_session'"
    ).fetchall()
    checks.append(Check("table test_session exists", bool(exists)))
    if not exists:
        return checks

    # -- View table structure
    columns = {
        name: (data_type, nullable)
        for name, data_type, nullable in conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'test_session' ORDER BY ordinal_position"
        ).fetchall()
    }
    for name, (want_type, want_null) in EXPECTED_COLUMNS.items():
        got = columns.get(name)
        ok = got is not None and got[0] in want_type.split("|") and got[1] == want_null
        detail = "missing" if got is None else f"{got[0]}, nullable={got[1]}"
        if not ok and got is not None:
            detail += f" (want {want_type.replace('|', ' or ')}, nullable={want_null})"
        checks.append(Check(f"column {name}", ok, detail))

    # -- Check indexes
    indexes = dict(
        conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'test_session'"
        ).fetchall()
    )
    for name, fragment in EXPECTED_INDEXES.items():
        definition = indexes.get(name)
        ok = definition is not None and fragment in definition
        checks.append(Check(f"index {name}", ok, definition or "missing"))

    # -- Check triggers
    triggers: dict[str, set[str]] = {}
    for name, event, _table in conn.execute(
        "SELECT trigger_name, event_manipulation, event_object_table "
        "FROM information_schema.triggers WHERE event_object_table = 'test_session'"
    ).fetchall():
        triggers.setdefault(name, set()).add(event)
    for name, events in EXPECTED_TRIGGERS.items():
        got_events = triggers.get(name, set())
        checks.append(
            Check(
                f"trigger {name}",
                got_events == events,
                ", ".join(sorted(got_events)) or "missing",
            )
        )

    # -- Constraints (named, so errors can be mapped by name)
    constraints = dict(
        conn.execute(
            "SELECT conname, contype FROM pg_constraint WHERE conrelid = 'test_session'::regclass"
        ).fetchall()
    )
    for name, kind in EXPECTED_CONSTRAINTS.items():
        checks.append(Check(f"constraint {name}", constraints.get(name) == kind))
    fk = conn.execute(
        "SELECT confrelid::regclass::text, confdeltype FROM pg_constraint "
        "WHERE conrelid = 'test_session'::regclass AND conname = 'test_session_candidate_fk'"
    ).fetchone()
    checks.append(
        Check(
            "foreign key to candidate(candidate_id) ON DELETE CASCADE",
            fk == ("candidate", "c"),
            f"references {fk[0]}, on delete {fk[1]}" if fk else "missing",
        )
    )

    event_table = conn.execute("SELECT to_regclass('test_session_event') IS NOT NULL").fetchone()
    checks.append(Check("table test_session_event exists", event_table == (True,)))

    # -- The webhook outbox (migration 0002)
    for table, expected in EXPECTED_WEBHOOK_CONSTRAINTS.items():
        found = dict(
            conn.execute(
                "SELECT conname, contype FROM pg_constraint WHERE conrelid = to_regclass(%s)",
                (table,),
            ).fetchall()
        )
        checks.append(Check(f"table {table} exists", bool(found), "" if found else "missing"))
        for name, kind in expected.items():
            checks.append(Check(f"constraint {name}", found.get(name) == kind))
    webhook_indexes = {
        name
        for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'webhook_delivery'"
        ).fetchall()
    }
    for name in EXPECTED_WEBHOOK_INDEXES:
        checks.append(Check(f"index {name}", name in webhook_indexes))

    checks.extend(distribution_checks(conn))

    done = migrate.applied_versions(conn)
    missing = [m for m in sql.migrations() if m.version not in done]
    changed = [
        m for m in sql.migrations() if m.version in done and done[m.version] != migrate.checksum(m)
    ]
    checks.append(
        Check(
            "migrations applied",
            not missing,
            "pending: " + ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
            if missing
            else f"{len(done)} applied",
        )
    )
    if changed:
        names = ", ".join(f"{m.version:04d}" for m in changed)
        checks.append(
            Check("migration files unchanged since applied", True, f"note: edited {names}")
        )
    return checks


def distribution_checks(conn: psycopg.Connection[Any]) -> list[Check]:
    """Whether the database is distributed (Citus, `db distribute`), and if so, as planned:
    every table of a session by candidate_id in one co-location group, webhook_endpoint a
    reference table. Not distributed is no failure; half distributed is."""
    state = distribute.inspect(conn)
    if not state.is_citus:
        return [Check("distributed", True, "no: plain PostgreSQL (no citus extension)")]
    if state.untouched:
        return [
            Check(
                "distributed",
                True,
                f"no: citus {state.citus_version}, tables local (`invigilator db distribute`)",
            )
        ]
    problems = state.problems()
    checks = [Check("distributed", not problems, f"citus {state.citus_version}")]
    for p in distribute.PLAN:
        got = state.tables[p.table]
        detail = got.kind
        if got.kind == "distributed":
            detail += f" by {got.column}, {got.shard_count} shards, group {got.colocation_id}"
        checks.append(
            Check(
                f"{p.table} {p.kind}",
                not any(problem.startswith(f"{p.table} ") for problem in problems),
                detail,
            )
        )
    return checks
