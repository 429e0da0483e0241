"""Fixtures of the reliability tests. Helpers live in faults.py (a plain module)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import PrivatePostgres, in_process_api

from apitools import Api, make_settings
from invigilator.db import migrate


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A migrated PostgreSQL server of this module's own, which its tests may stop and start
    (the shared test server must never stop).

    Its data lives in a directory of its own, not under pytest's tmp_path: as root the server
    runs as the user `pgserver`, and every new pytest session resets /tmp/pytest-of-root to
    0700, which would lock the server out of its own data."""
    data_dir = Path(tempfile.mkdtemp(prefix="invigilator-private-pg-"))
    try:
        pg = PrivatePostgres(data_dir)
        try:
            migrate.upgrade(pg.url, create_candidate_table=True)
            yield pg
        finally:
            pg.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    async with in_process_api(db_url, make_settings()) as value:
        yield value


@pytest.fixture
def api_with(db_url: str) -> Any:
    """`async with api_with(rate_limit_ip_burst=5) as api:` for a test that changes settings."""

    @contextlib.asynccontextmanager
    async def factory(client_ip: str = "127.0.0.1", **overrides: Any) -> AsyncIterator[Api]:
        async with in_process_api(db_url, make_settings(**overrides), client_ip) as value:
            yield value

    return factory
