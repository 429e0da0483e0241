"""`invigilator db check`: can this service use this database? Each problem comes with its fix,
as in the setup guide's Troubleshooting."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from invigilator.db import migrate
from invigilator.db.url import mask_url, scrub

MIN_SERVER_VERSION = 140000


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check(conninfo: str) -> list[Finding]:
    shown = mask_url(conninfo)
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        message = scrub(str(exc).strip(), conninfo)
        fix = "Check host, port, user, password and sslmode in DATABASE_URL"
        if "password authentication failed" in message:
            fix = "The user name or password is wrong; reset it or fix DATABASE_URL"
        elif "no pg_hba.conf entry" in message or "SSL" in message:
            fix = "The server wants TLS: add ?sslmode=require (Azure does)"
        elif "permission denied" in message:
            fix = "Use a role that may connect to this database (the guide used its admin role)"
        return [Finding("connection", False, f"{shown}: {message}", fix)]

    findings = [Finding("connection", True, shown)]
    with conn:
        version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        findings.append(
            Finding(
                "server version",
                version_num >= MIN_SERVER_VERSION,
                f"PostgreSQL {version}",
                "" if version_num >= MIN_SERVER_VERSION else "Use PostgreSQL 14 or newer",
            )
        )
        user, db = conn.execute("SELECT current_user, current_database()").fetchone()  # type: ignore[misc]
        findings.append(Finding("database and role", True, f"{db} as {user}"))

        schema_exists = conn.execute(
            "SELECT to_regclass('test_session') IS NOT NULL"
        ).fetchone() == (True,)
        if schema_exists:
            row = conn.execute(
                "SELECT has_table_privilege('test_session', 'SELECT,INSERT,UPDATE'),"
                " has_table_privilege('test_session_event', 'SELECT,INSERT')"
            ).fetchone()
            ok = row == (True, True)
            findings.append(
                Finding(
                    "privileges on test_session and test_session_event",
                    ok,
                    "SELECT, INSERT, UPDATE" if ok else "missing",
                    ""
                    if ok
                    else "permission denied: GRANT SELECT, INSERT, UPDATE ON "
                    f"test_session, test_session_event TO {user} (see docs/deploy.md)",
                )
            )
            webhooks = conn.execute(
                "SELECT to_regclass('webhook_delivery') IS NULL"
                " OR (has_table_privilege('webhook_endpoint', 'SELECT,INSERT,UPDATE')"
                " AND has_table_privilege('webhook_delivery', 'SELECT,INSERT,UPDATE,DELETE'))"
            ).fetchone() == (True,)
            findings.append(
                Finding(
                    "privileges on webhook_endpoint and webhook_delivery",
                    webhooks,
                    "SELECT, INSERT, UPDATE (+ DELETE on webhook_delivery)"
                    if webhooks
                    else "missing",
                    ""
                    if webhooks
                    else "permission denied: GRANT SELECT, INSERT, UPDATE ON webhook_endpoint TO "
                    f"{user}; GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_delivery TO {user} "
                    "(see docs/deploy.md)",
                )
            )
        pending = migrate.pending(conn)
        can_create = conn.execute(
            "SELECT has_schema_privilege(current_schema(), 'CREATE')"
        ).fetchone() == (True,)
        if pending:
            findings.append(
                Finding(
                    "privilege to create tables",
                    can_create,
                    f"CREATE on schema {conn.execute('SELECT current_schema()').fetchone()[0]}"  # type: ignore[index]
                    if can_create
                    else "missing",
                    ""
                    if can_create
                    else "permission denied: run `invigilator db upgrade` as "
                    "the database owner or an admin role, as the guide does",
                )
            )
        problem = migrate.candidate_table_problem(conn)
        findings.append(
            Finding(
                "candidate table",
                problem is None,
                "candidate(candidate_id) is usable" if problem is None else problem.message,
                problem.fix if problem else "",
            )
        )
        findings.append(
            Finding(
                "schema migrations",
                not pending,
                "up to date"
                if not pending
                else "pending: " + ", ".join(f"{m.version:04d}_{m.name}" for m in pending),
                "" if not pending else "Run `invigilator db upgrade`",
            )
        )
    return findings
