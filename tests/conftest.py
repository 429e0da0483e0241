"""Test databases: one real PostgreSQL per run (embedded, or $INVIGILATOR_TEST_DATABASE_URL),
a migrated template database made once, and for every test a clone of it that is its alone
(emptied and lent again when the test left its schema alone); the store and the app
in-process on that database."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from invigilator.db import connector, distribute, migrate
from invigilator.db.embedded import start_embedded, stop_embedded
from invigilator.store import SessionStore
from support.api import Api, in_process_api, make_settings
from support.databases import (
    admin_connection,
    database_url,
    databases,
    drop,
    fresh_database,
    make_citus,
    node_urls,
)
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


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    drop(server_url, TEMPLATE)
    for node in node_urls(server_url):
        with admin_connection(node) as admin:
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(TEMPLATE)))
    if CITUS_WORKERS:
        make_citus(server_url, TEMPLATE)
    migrate.upgrade(database_url(server_url, TEMPLATE), create_candidate_table=True)
    if CITUS_WORKERS:
        distribute.distribute(database_url(server_url, TEMPLATE))
    yield TEMPLATE
    while databases.spare:
        drop(server_url, databases.spare.pop()[0])
    drop(server_url, TEMPLATE)


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database (with the minimal candidate table) that is this test's alone, as a
    new one would be: no rows but the template's, sequences unused (support/databases.py)."""
    if CITUS_WORKERS:  # distributed tables: a fresh clone each time, as before
        yield from fresh_database(server_url, template_db)
    else:
        yield from databases.lend(server_url, template_db)


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A database with nothing in it: for prerequisites, adoption and migration tests."""
    yield from fresh_database(server_url, None)


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
