"""A comparable picture of the schema, from the catalogs: what "the same schema" means."""

from __future__ import annotations

from typing import Any

import psycopg

TABLES = (
    "test_session",
    "test_session_event",
    "invigilator_schema_migration",
    "candidate",
    "webhook_endpoint",
    "webhook_delivery",
)


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    columns = conn.execute(
        """SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,
                  column_default, is_identity
             FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = ANY(%s)
            ORDER BY table_name, column_name""",
        (list(TABLES),),
    ).fetchall()
    constraints = conn.execute(
        """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
             FROM pg_constraint
            WHERE conrelid::regclass::text = ANY(%s)
            ORDER BY 1, 2""",
        (list(TABLES),),
    ).fetchall()
    indexes = conn.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE tablename = ANY(%s) ORDER BY 1, 2",
        (list(TABLES),),
    ).fetchall()
    triggers = conn.execute(
        """SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
             FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text = ANY(%s)
            ORDER BY 1, 2""",
        (list(TABLES),),
    ).fetchall()
    functions = conn.execute(
        """SELECT proname, pg_get_function_identity_arguments(oid), prosrc FROM pg_proc
            WHERE pronamespace = current_schema()::regnamespace ORDER BY 1, 2"""
    ).fetchall()
    migrations = conn.execute(
        "SELECT version, name, checksum FROM invigilator_schema_migration ORDER BY version"
    ).fetchall()
    return {
        "columns": columns,
        "constraints": constraints,
        "indexes": indexes,
        "triggers": triggers,
        "functions": functions,
        "migrations": migrations,
    }
