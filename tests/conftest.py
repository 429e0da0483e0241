"""Test databases: one real PostgreSQL per run (embedded, or $INVIGILATOR_TEST_DATABASE_URL),
a migrated template database made once, and a fresh clone of it for every test; the store and
the app in-process on that clone."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from invigilator.db import connector, migrate
from invigilator.db.embedded import start_embedded, stop_embedded
from invigilator.store import SessionStore
from support.api import Api, in_process_api, make_settings
from support.db import TEST_POLICY

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


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    with _admin(server_url) as admin:
        admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(TEMPLATE)))
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(TEMPLATE)))
    migrate.upgrade(database_url(server_url, TEMPLATE), create_candidate_table=True)
    yield TEMPLATE
    with _admin(server_url) as admin:
        admin.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(TEMPLATE))
        )


def _fresh_database(server_url: str, template: str | None) -> Iterator[str]:
    name = f"invigilator_test_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as admin:
        if template:
            # FILE_COPY copies the template's files; the default since PostgreSQL 15 (WAL_LOG)
            # writes every page of it through the WAL, measured ~7x slower for this small
            # template, and every test pays it once.
            strategy = pgsql.SQL(
                " STRATEGY FILE_COPY" if admin.info.server_version >= 150000 else ""
            )
            admin.execute(
                pgsql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    pgsql.Identifier(name), pgsql.Identifier(template), strategy
                )
            )
        else:
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    yield database_url(server_url, name)
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
