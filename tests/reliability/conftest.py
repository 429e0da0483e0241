"""Fixtures of the reliability tests (`api` and `api_with` are the suite's, in
tests/conftest.py). Helpers live in faults.py (a plain module)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import PrivatePostgres

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
