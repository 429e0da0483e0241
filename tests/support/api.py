"""Driving the API in-process through httpx: settings, the app with its lifespan, the Api
helper, problem checks."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from invigilator.api.app import create_app
from invigilator.config import Settings

STAFF_KEY = "staff-key-for-tests-0123456789"
OTHER_STAFF_KEY = "second-staff-key-abcdefghijkl"
SECRET = "secret-key-for-tests-0123456789abcdef"


@functools.lru_cache(maxsize=8)
def _settings_from(environment: frozenset[tuple[str, str]]) -> Settings:
    return Settings()  # reads os.environ, which `environment` is a snapshot of


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secret_key": SecretStr(SECRET),
        "admin_keys": [SecretStr(STAFF_KEY), SecretStr(OTHER_STAFF_KEY)],
        "sweeper_enabled": False,
        "demo": False,
        "pool_min_size": 1,
        "pool_max_size": 4,
    }
    values.update(overrides)
    # Reading the environment costs ~60 ms of CPU and most tests make settings at least once:
    # the same environment gives the same settings.
    return _settings_from(frozenset(os.environ.items())).model_copy(update=values)


@dataclass
class Api:
    client: httpx.AsyncClient
    app: Any = None  # the app under test, when a test needs to look inside

    @property
    def staff(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {STAFF_KEY}"}

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def start(self, candidate_id: str, **body: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/sessions",
            json={"candidate_id": candidate_id, "create_candidate": True, **body},
            headers=self.staff,
        )
        assert response.status_code in (200, 201), response.text
        data: dict[str, Any] = response.json()
        return data

    async def as_candidate(
        self, method: str, candidate_id: str, path: str, token: str, **kwargs: Any
    ) -> httpx.Response:
        return await self.client.request(
            method, f"/api/v1/sessions/{candidate_id}/{path}", headers=self.bearer(token), **kwargs
        )


@contextlib.asynccontextmanager
async def in_process_api(
    database_url: str,
    settings: Settings | None = None,
    *,
    client_ip: str = "127.0.0.1",
    base_url: str = "http://testserver",
) -> AsyncIterator[Api]:
    """The whole app on `database_url` with its lifespan (pool, store, background parts as
    `settings` say), driven through httpx as if from `client_ip`."""
    app = create_app(settings or make_settings(), database_url=database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30) as client:
            yield Api(client, app)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body
