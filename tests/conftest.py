"""Test databases: one real PostgreSQL per run (embedded, or $INVIGILATOR_TEST_DATABASE_URL),
a migrated template database made once, and a fresh clone of it for every test; the store and
the app in-process on that clone."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from invigilator.db import connector, distribute, migrate
from invigilator.db.embedded import start_embedded, stop_embedded
from invigilator.store import SessionStore
from support.api import Api, in_process_api, make_settings
from support.db import CITUS_WORKERS, TEST_POLICY

TEMPLATE = f"invigilator_template_{os.getpid()}"


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The admin URL of the PostgreSQL server the tests run on."""
    external = os.environ.get("INVIGILATOR_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="invigilator-test-") as tmp:
        url = start_embedded(Path(tmp))
        # A throwaway server: durability buys nothing here and costs every commit and every
        # CREATE DATABASE a flush. (Never done to an external INVIGILATOR_TEST_DATABASE_URL.)
        with psycopg.connect(url, autocommit=True) as conn:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(f"ALTER SYSTEM SET {setting} = off")
            conn.execute("SELECT pg_reload_conf()")
        try:
            yield url
        finally:  # before the directory goes, or the server outlives the run
            stop_embedded(Path(tmp))


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True)


def database_url(server_url: str, name: str) -> str:
    return make_conninfo(server_url, dbname=name)


def _nodes(server_url: str) -> list[str]:
    """The admin URLs of every node a test database lives on: the server, and in Citus mode
    its workers too."""
    return [server_url] + [
        make_conninfo(server_url, host=w.rpartition(":")[0], port=w.rpartition(":")[2])
        for w in CITUS_WORKERS
    ]


def _drop(server_url: str, name: str) -> None:
    drop = pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
    for node in _nodes(server_url):
        with _admin(node) as admin:
            # FORCE ends backends, not Citus's maintenance daemon, which may be reconnecting
            # at that moment: then try again, for up to 10 s (2.5 s was once too short on a
            # worker, with 4 sessions still in the clone).
            for attempt in range(200):
                try:
                    admin.execute(drop)
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 199 or not CITUS_WORKERS:
                        raise
                    time.sleep(0.05)


def _make_citus(server_url: str, name: str) -> None:
    """The citus extension on every node of `name`, and the workers added to the coordinator."""
    for node in _nodes(server_url):
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


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    _drop(server_url, TEMPLATE)
    for node in _nodes(server_url):
        with _admin(node) as admin:
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(TEMPLATE)))
    if CITUS_WORKERS:
        _make_citus(server_url, TEMPLATE)
    migrate.upgrade(database_url(server_url, TEMPLATE), create_candidate_table=True)
    if CITUS_WORKERS:
        distribute.distribute(database_url(server_url, TEMPLATE))
    yield TEMPLATE
    _drop(server_url, TEMPLATE)


def _clone(admin: psycopg.Connection[Any], name: str, template: str) -> None:
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


def _fresh_database(server_url: str, template: str | None) -> Iterator[str]:
    name = f"invigilator_test_{uuid.uuid4().hex[:12]}"
    nodes = _nodes(server_url) if template else [server_url]
    for node in nodes:
        with _admin(node) as admin:
            if template:
                _clone(admin, name, template)
            else:
                admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    yield database_url(server_url, name)
    if template:
        _drop(server_url, name)
    else:
        with _admin(server_url) as admin:
            admin.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database (with the minimal candidate table), new for this test."""
    yield from _fresh_database(server_url, template_db)


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A database with nothing in it: for prerequisites, adoption and migration tests."""
    yield from _fresh_database(server_url, None)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection to the test database, for arranging and inspecting."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SessionStore]:
    pool = connector.pool_for(db_url, min_size=1, max_size=8)
    await pool.open(wait=True)
    try:
        yield SessionStore(pool, TEST_POLICY)
    finally:
        await pool.close()


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    """The app (lifespan included) on this test's database, driven in-process through httpx."""
    async with in_process_api(db_url, make_settings()) as value:
        yield value


@pytest.fixture
def api_with(db_url: str) -> Any:
    """`async with api_with(max_answers_bytes=...) as api:` for a test that changes a setting,
    `api_with(client_ip="203.0.113.7", ...)` for one that comes from another address."""

    @contextlib.asynccontextmanager
    async def factory(client_ip: str = "127.0.0.1", **overrides: Any) -> AsyncIterator[Api]:
        async with in_process_api(db_url, make_settings(**overrides), client_ip=client_ip) as value:
            yield value

    return factory


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Citus mode (docs/scaling.md): a test marked not_on_citus is skipped with its reason."""
    if not CITUS_WORKERS:
        return
    for item in items:
        marker = item.get_closest_marker("not_on_citus")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"not on Citus: {marker.args[0]}"))
