"""The suite's databases on its PostgreSQL server: made from the migrated template, lent to one
test at a time, and dropped (tests/conftest.py holds the fixtures that use them)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from support.db import CITUS_WORKERS


def admin_connection(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True)


def database_url(server_url: str, name: str) -> str:
    return make_conninfo(server_url, dbname=name)


def node_urls(server_url: str) -> list[str]:
    """The admin URLs of every node a test database lives on: the server, and in Citus mode
    its workers too."""
    return [server_url] + [
        make_conninfo(server_url, host=w.rpartition(":")[0], port=w.rpartition(":")[2])
        for w in CITUS_WORKERS
    ]


def drop(server_url: str, name: str) -> None:
    statement = pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
    for node in node_urls(server_url):
        with admin_connection(node) as admin:
            # FORCE ends backends, not Citus's maintenance daemon, which may be reconnecting
            # at that moment: then try again, for up to 10 s (2.5 s was once too short on a
            # worker, with 4 sessions still in the clone).
            for attempt in range(200):
                try:
                    admin.execute(statement)
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 199 or not CITUS_WORKERS:
                        raise
                    time.sleep(0.05)


def make_citus(server_url: str, name: str) -> None:
    """The citus extension on every node of `name`, and the workers added to the coordinator."""
    for node in node_urls(server_url):
        with psycopg.connect(database_url(node, name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    info = conninfo_to_dict(server_url)
    with psycopg.connect(database_url(server_url, name), autocommit=True) as conn:
        conn.execute(
            "SELECT citus_set_coordinator_host(%s, %s)",
            (info.get("host", "127.0.0.1"), int(info.get("port", 5432))),
        )
        for w in CITUS_WORKERS:
            host, _, port = w.rpartition(":")
            conn.execute("SELECT citus_add_node(%s, %s)", (host, int(port)))


def clone(admin: psycopg.Connection[Any], name: str, template: str) -> None:
    # FILE_COPY copies the template's files; the default since PostgreSQL 15 (WAL_LOG) writes
    # every page of it through the WAL, measured ~7x slower for this small template, and every
    # test pays it once.
    strategy = pgsql.SQL(" STRATEGY FILE_COPY" if admin.info.server_version >= 150000 else "")
    create = pgsql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
        pgsql.Identifier(name), pgsql.Identifier(template), strategy
    )
    if not CITUS_WORKERS:
        admin.execute(create)
        return
    # Citus's maintenance daemon and cached connections sit in the template, and the daemon
    # comes back: CREATE DATABASE … TEMPLATE needs the template to itself for the moment of
    # the copy, so end them and try again until it gets that moment.
    for attempt in range(50):
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (template,),
        )
        try:
            admin.execute(create)
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 49:
                raise
            time.sleep(0.05)


def fresh_database(server_url: str, template: str | None) -> Iterator[str]:
    name = f"invigilator_test_{uuid.uuid4().hex[:12]}"
    targets = node_urls(server_url) if template else [server_url]
    for node in targets:
        with admin_connection(node) as admin:
            if template:
                clone(admin, name, template)
            else:
                admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    yield database_url(server_url, name)
    if template:
        drop(server_url, name)
    else:
        with admin_connection(server_url) as admin:
            admin.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )


#: Catalogs whose rows are a database's schema: any DDL, grant, comment or ALTER DATABASE SET
#: inserts, updates or deletes one of their rows, and so changes the set of (ctid, xmin) pairs.
#: Statistics are written in place and leave them alone.
_SCHEMA_CATALOGS = (
    "pg_class",
    "pg_attribute",
    "pg_attrdef",
    "pg_constraint",
    "pg_index",
    "pg_inherits",
    "pg_proc",
    "pg_type",
    "pg_namespace",
    "pg_trigger",
    "pg_rewrite",
    "pg_policy",
    "pg_event_trigger",
    "pg_extension",
    "pg_description",
    "pg_sequence",
    "pg_enum",
    "pg_cast",
    "pg_operator",
    "pg_aggregate",
    "pg_language",
    "pg_collation",
    "pg_default_acl",
    "pg_statistic_ext",
    "pg_publication",
    "pg_largeobject_metadata",
)
_FINGERPRINT = pgsql.SQL(
    "SELECT md5(concat_ws('|', {}, (SELECT string_agg(ctid::text || xmin::text, ',' ORDER BY"
    " ctid) FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE"
    " datname = current_database()))))"
).format(
    pgsql.SQL(", ").join(
        pgsql.SQL(
            "(SELECT string_agg(ctid::text || xmin::text, ',' ORDER BY ctid) FROM {})"
        ).format(pgsql.Identifier(catalog))
        for catalog in _SCHEMA_CATALOGS
    )
)


class Databases:
    """This worker's clones of the template, lent to one test at a time.

    A clone costs PostgreSQL two checkpoints (FILE_COPY) and its first connections cold
    catalog caches; with four workers each CREATE DATABASE waited ~0.7 s for the others'
    checkpoints. So a test's database is given back instead: every other connection to it
    ended, its tables emptied, its sequences and statistics reset. It goes back only if the
    test left its schema alone (the catalogs' fingerprint is the one it was lent with) and
    its seeded rows (the migrations' record) as the template has them; otherwise it is
    dropped, and the next test gets a fresh clone."""

    def __init__(self) -> None:
        self.spare: list[tuple[str, str]] = []  # (name, fingerprint after its last cleaning)
        self._tables: tuple[str, ...] | None = None  # the template's empty tables
        self._seeded: str | None = None  # the template's non-empty tables, as text
        self._seeded_tables: tuple[str, ...] = ()
        self.reusable: bool | None = None

    def lend(self, server_url: str, template: str) -> Iterator[str]:
        if self.reusable is None:  # resetting statistics takes a superuser
            with admin_connection(server_url) as admin:
                self.reusable = admin.execute(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                ).fetchone() == (True,)
        if not self.reusable:
            yield from fresh_database(server_url, template)
            return
        if self.spare:
            name, baseline = self.spare.pop()
        else:
            name = f"invigilator_test_{uuid.uuid4().hex[:12]}"
            with admin_connection(server_url) as admin:
                clone(admin, name, template)
            baseline = self._clean(database_url(server_url, name), first=True)
        yield database_url(server_url, name)
        cleaned = self._clean(database_url(server_url, name), first=False, baseline=baseline)
        if cleaned is None:
            drop(server_url, name)
        else:
            self.spare.append((name, cleaned))

    def _clean(self, url: str, *, first: bool, baseline: str = "") -> Any:
        with psycopg.connect(url, autocommit=True) as conn:
            # A test's stray connections (a server thread still closing) are ended and
            # waited for (up to 5 s each), so none sees the next test's rows.
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if self._tables is None:
                self._learn(conn)
            if not first:
                if conn.execute(_FINGERPRINT).fetchone() != (baseline,):
                    return None
                if self._seeded_text(conn) != self._seeded:
                    return None
                if conn.execute(
                    "SELECT 1 FROM pg_prepared_xacts WHERE database = current_database()"
                ).fetchone():
                    return None
                if not self._empty(conn):
                    return baseline  # pg_class as it was: the fingerprint too
            row = conn.execute(_FINGERPRINT).fetchone()
            return row[0] if row else None

    def _learn(self, conn: psycopg.Connection[Any]) -> None:
        """Which of the template's tables have rows (kept as they are) and which do not
        (emptied after each test)."""
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN"
                " ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_t%'"
                " ORDER BY 1"
            ).fetchall()
        ]
        seeded = [t for t in tables if conn.execute(f"SELECT EXISTS (TABLE {t})").fetchone()[0]]
        self._tables = tuple(t for t in tables if t not in seeded)
        self._seeded_tables = tuple(seeded)
        self._seeded = self._seeded_text(conn)

    def _seeded_text(self, conn: psycopg.Connection[Any]) -> str:
        parts = [
            conn.execute(f"SELECT string_agg(t::text, ',' ORDER BY t::text) FROM {t} t").fetchone()
            for t in self._seeded_tables
        ]
        return repr(parts)

    def _empty(self, conn: psycopg.Connection[Any]) -> bool:
        """Empty the tables a test filled; True when that rewrote rows of pg_class.

        Tables of a few pages (what most tests leave) are emptied by DELETE: a TRUNCATE gives
        every table and index a new file and pg_class row, about 70 ms of PostgreSQL's CPU
        against 5 (measured), and the next test's first statements then reload them. The
        dead rows left stay below the ten pages the planner assumes of a table never
        vacuumed, so its estimates are a fresh clone's; a table a test analyzed (or
        autovacuum did) has its statistics cleared again. Anything bigger is truncated."""
        assert self._tables is not None
        rewrote = False
        pg18 = conn.info.server_version >= 180000  # pg_clear_relation_stats
        if self._tables:
            filled = conn.execute(
                " UNION ALL ".join(
                    f"SELECT '{t}', pg_relation_size('{t}'), pg_table_size('{t}')"
                    f" WHERE EXISTS (TABLE {t})"
                    for t in self._tables
                )
            ).fetchall()
            small = all(
                heap <= _DELETE_UP_TO_BYTES and size <= _DELETE_UP_TO_BYTES_WITH_TOAST
                for _, heap, size in filled
            )
            if filled and small and pg18:
                with conn.transaction():
                    # no foreign-key or other triggers: every table of the test goes
                    conn.execute("SET LOCAL session_replication_role = replica")
                    for table, _, _ in filled:
                        conn.execute(f"DELETE FROM {table}")
            elif filled:
                conn.execute("TRUNCATE " + ", ".join(t for t, _, _ in filled) + " CASCADE")
                rewrote = True
            if pg18:
                # statistics a test's ANALYZE (or autovacuum) wrote; the template has none.
                # pg_clear_relation_stats (PostgreSQL 18) rewrites the table's pg_class row.
                cleared = conn.execute(
                    "SELECT pg_clear_relation_stats(n.nspname, c.relname) FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.oid = ANY (%s::regclass[]) AND c.reltuples >= 0",
                    (list(self._tables),),
                ).fetchall()
                rewrote = rewrote or bool(cleared)
        # As a fresh clone has them: sequences unused, no column statistics.
        conn.execute(
            "SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, start_value,"
            " false) FROM pg_sequences WHERE last_value IS NOT NULL"
        )
        conn.execute(
            "DELETE FROM pg_statistic WHERE starelid IN (SELECT c.oid FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN"
            " ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_t%')"
        )
        return rewrote


#: Tables up to this size are emptied by DELETE (`Databases._empty`): eight pages, under the ten
#: the planner assumes of a table that was never vacuumed; with their TOAST, a megabyte.
_DELETE_UP_TO_BYTES = 8 * 8192
_DELETE_UP_TO_BYTES_WITH_TOAST = 1024 * 1024


databases = Databases()
