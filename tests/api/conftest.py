"""An app per test on its own cloned database, driven in-process through httpx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from apitools import Api, make_settings
from invigilator.api.app import create_app
from invigilator.config import Settings


async def _api(db_url: str, settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings, database_url=db_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client, app)


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    async for value in _api(db_url, make_settings()):
        yield value


@pytest.fixture
def api_with(db_url: str) -> Any:
    """`async with api_with(max_answers_bytes=...) as api:` for tests that change a setting."""

    @contextlib.asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Api]:
        async for value in _api(db_url, make_settings(**overrides)):
            yield value

    return factory
