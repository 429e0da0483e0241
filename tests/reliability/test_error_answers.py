"""Every answer carries the security headers, the request id and the app's CORS headers, the
413 and 500 ones included (issue 16): a cross-origin page that gets a 413 must be able to
read it, or its client sees a network error and retries the oversized batch for ever."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from invigilator.api.app import create_app
from invigilator.api.headers import SECURITY_HEADERS
from support.api import Api, make_settings

ORIGIN = "https://exams.example.com"


@contextlib.asynccontextmanager
async def app_api(db_url: str, **overrides: Any) -> AsyncIterator[Api]:
    settings = make_settings(cors_origins=[ORIGIN], **overrides)
    app = create_app(settings, database_url=db_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=30
        ) as client:
            yield Api(client, app)


def assert_decorated(response: httpx.Response, request_id: str | None = None) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.status_code, name)
    assert response.headers.get("x-request-id"), response.status_code
    if request_id is not None:
        assert response.headers["x-request-id"] == request_id
    assert response.headers.get("access-control-allow-origin") == ORIGIN, response.status_code
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_413_carries_every_header(db_url: str) -> None:
    async with app_api(db_url, max_body_bytes=4096) as api:
        token = (await api.start("alice"))["token"]
        headers = {**api.bearer(token), "Origin": ORIGIN, "X-Request-ID": "req-413-declared"}
        declared = await api.client.patch(
            "/api/v1/sessions/alice/answers",
            content=b"{" + b" " * 10_000 + b"}",
            headers={**headers, "Content-Type": "application/json"},
        )
        assert declared.status_code == 413
        assert_decorated(declared, "req-413-declared")

        async def streamed() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1024

        chunked = await api.client.patch(
            "/api/v1/sessions/alice/answers",
            content=streamed(),
            headers={**headers, "Content-Type": "application/json", "X-Request-ID": "req-413-s"},
        )
        assert chunked.status_code == 413
        assert_decorated(chunked, "req-413-s")
        # A heartbeat too large for the fast path goes to the route, and gets the same.
        beat = await api.client.post(
            "/api/v1/sessions/alice/heartbeat",
            content=b'{"active": true' + b" " * 10_000 + b"}",
            headers={**headers, "Content-Type": "application/json"},
        )
        assert beat.status_code == 413
        assert_decorated(beat)
        # The answer-level limit (a domain error) too.
        answer = await api.client.patch(
            "/api/v1/sessions/alice/answers",
            json={"answers": {"q1": "x" * 3000, "q2": "y" * 3000}, "seq": 1},
            headers=headers,
        )
        assert answer.status_code in (413, 422)


@pytest.mark.parametrize("otel", [False, True], ids=["fast_path", "route"])
async def test_a_500_carries_every_header(
    db_url: str, monkeypatch: pytest.MonkeyPatch, otel: bool
) -> None:
    async with app_api(db_url, otel=otel) as api:
        token = (await api.start("alice"))["token"]
        runtime = api.app.state.runtime

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug, not the client's fault")

        monkeypatch.setattr(runtime.sessions, "read", broken)
        monkeypatch.setattr(runtime.sessions, "heartbeat", broken)
        headers = {**api.bearer(token), "Origin": ORIGIN, "X-Request-ID": "req-500"}
        for response in (
            await api.client.get("/api/v1/sessions/alice/state", headers=headers),
            await api.client.get(
                "/api/v1/sessions/alice",
                headers={**api.staff, "Origin": ORIGIN, "X-Request-ID": "req-500"},
            ),
            await api.client.post(
                "/api/v1/sessions/alice/heartbeat", json={"active": True}, headers=headers
            ),
        ):
            assert response.status_code == 500, response.text
            assert response.json()["code"] == "internal_error"
            assert "a bug" not in response.text  # no detail of the bug leaves
            assert_decorated(response, "req-500")


async def test_every_refusal_carries_every_header(db_url: str) -> None:
    """The ordinary 4xx answers, for comparison: 401, 404, 405, 422, and a CORS preflight."""
    async with app_api(db_url) as api:
        headers = {"Origin": ORIGIN}
        for response in (
            await api.client.get("/api/v1/sessions/alice/state", headers=headers),
            await api.client.get("/api/v1/nothing-here", headers=headers),
            await api.client.put("/api/v1/sessions", headers={**headers, **api.staff}),
            await api.client.post("/api/v1/sessions", json={}, headers={**headers, **api.staff}),
        ):
            assert 400 <= response.status_code < 500
            assert_decorated(response)
        preflight = await api.client.options(
            "/api/v1/sessions/alice/answers",
            headers={**headers, "Access-Control-Request-Method": "PATCH"},
        )
        assert preflight.status_code == 200
        for name, value in SECURITY_HEADERS.items():
            assert preflight.headers.get(name) == value, name
