"""The OpenAPI document is true enough for a client generated from it, by a tool nobody here
wrote (`openapi-python-client`), to run a whole session, error paths included: the live
/openapi.json of the app, generated into a package, imported, and driven against the same app.
`openapi-spec-validator` passes on the document too."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from invigilator.api.app import create_app
from support.api import STAFF_KEY, make_settings

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
#: The generator has no SVG support: a chart comes back as bytes (a File), as binary would.
CONFIG = "content_type_overrides:\n  image/svg+xml: application/octet-stream\n"


@pytest.fixture
async def app(db_url: str) -> AsyncIterator[Any]:
    app = create_app(make_settings(), database_url=db_url)
    async with app.router.lifespan_context(app):
        yield app


def http(app: Any, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    )


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Any]:
    """A function: the OpenAPI document (a dict) -> the generated package, imported."""
    added: list[str] = []

    def generate(document: dict[str, Any]) -> ModuleType:
        (tmp_path / "openapi.json").write_text(json.dumps(document), "utf-8")
        (tmp_path / "config.yml").write_text(CONFIG, "utf-8")
        done = subprocess.run(
            [str(GENERATOR), "generate", "--path", "openapi.json", "--config", "config.yml",
             "--meta", "none", "--output-path", "invigilator_gen_client"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        # the one thing it cannot generate: the text/plain beacon body (JSON works, below)
        warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
        assert all("tab-close" in line for line in warnings), done.stdout
        sys.path.insert(0, str(tmp_path))
        added.append(str(tmp_path))
        return importlib.import_module("invigilator_gen_client")

    yield generate
    for path in added:
        sys.path.remove(path)
    for name in [n for n in sys.modules if n.startswith("invigilator_gen_client")]:
        del sys.modules[name]


async def test_a_generated_client_runs_a_whole_session(app: Any, generated: Any) -> None:
    async with http(app) as anonymous:
        document = (await anonymous.get("/openapi.json")).json()
    validate(document)  # openapi-spec-validator: a valid OpenAPI 3.1 document
    generated(document)
    from invigilator_gen_client import AuthenticatedClient, Client
    from invigilator_gen_client.api.analytics import chart, live, summary
    from invigilator_gen_client.api.candidate import (
        client_event,
        complete,
        heartbeat,
        save_answers,
        state,
        tab_close,
    )
    from invigilator_gen_client.api.health import healthz, readyz
    from invigilator_gen_client.api.staff import get_session, list_sessions, session_events
    from invigilator_gen_client.api.staff import start_session as start
    from invigilator_gen_client.models import (
        AnswersRequest,
        AnswersRequestAnswers,
        ClientEventRequest,
        ClientEventRequestType,
        CompleteResponse,
        Healthy,
        HeartbeatRequest,
        HeartbeatResponse,
        Live,
        Problem,
        Ready,
        SaveResponse,
        SessionWithAnswers,
        StartRequest,
        StartResponse,
        Summary,
        TabCloseJsonBody,
        Timeline,
        ValidationProblem,
    )

    def staff_client() -> Any:
        client = AuthenticatedClient(base_url="http://test", token=STAFF_KEY)
        return client.set_async_httpx_client(http(app, STAFF_KEY))

    def candidate_client(token: str) -> Any:
        client = AuthenticatedClient(base_url="http://test", token=token)
        return client.set_async_httpx_client(http(app, token))

    anonymous = Client(base_url="http://test").set_async_httpx_client(http(app))
    staff = staff_client()

    # health: typed bodies
    assert isinstance(await healthz.asyncio(client=anonymous), Healthy)
    ready = await readyz.asyncio(client=anonymous)
    assert isinstance(ready, Ready) and ready.status == "ready"

    # start: 201 new, then 200 with the same session and a fresh token
    first = await start.asyncio_detailed(
        client=staff, body=StartRequest(candidate_id="gen-1", create_candidate=True)
    )
    assert first.status_code == 201 and isinstance(first.parsed, StartResponse)
    again = await start.asyncio_detailed(
        client=staff, body=StartRequest(candidate_id="gen-1", create_candidate=True)
    )
    assert again.status_code == 200 and isinstance(again.parsed, StartResponse)
    assert again.parsed.token and again.parsed.test_start_time == first.parsed.test_start_time
    token = again.parsed.token
    candidate = candidate_client(token)

    # the candidate's whole session
    resumed = await state.asyncio("gen-1", client=candidate)
    assert isinstance(resumed, SessionWithAnswers) and resumed.status == "active"
    beat = await heartbeat.asyncio("gen-1", client=candidate, body=HeartbeatRequest(active=True))
    assert isinstance(beat, HeartbeatResponse) and beat.next_heartbeat_seconds > 0
    answers = AnswersRequestAnswers.from_dict({"q1": "forty-two", "q2": [1, 2]})
    saved = await save_answers.asyncio(
        "gen-1", client=candidate, body=AnswersRequest(answers=answers, seq=1)
    )
    assert isinstance(saved, SaveResponse) and sorted(saved.applied) == ["q1", "q2"]
    event = await client_event.asyncio_detailed(
        "gen-1", client=candidate, body=ClientEventRequest(type_=ClientEventRequestType.FOCUS_LOST)
    )
    assert event.status_code == 204
    left = await tab_close.asyncio_detailed(
        "gen-1", client=anonymous, body=TabCloseJsonBody(token=token)
    )
    assert left.status_code == 204  # the beacon's JSON, as application/json
    # back: the tab-close is cancelled. (The body is optional, but the generator sends its
    # UNSET marker for a missing optional body, so one is always passed.)
    await heartbeat.asyncio("gen-1", client=candidate, body=HeartbeatRequest())
    done = await complete.asyncio("gen-1", client=candidate)
    assert isinstance(done, CompleteResponse) and done.status == "completed"
    assert done.pending_answers.to_dict() == {"q1": "forty-two", "q2": [1, 2]}
    timeline = await session_events.asyncio("gen-1", client=staff)
    assert isinstance(timeline, Timeline)
    kinds = [e.type_ for e in timeline.events]
    assert kinds[0] == "started" and "focus_lost" in kinds and "completed" in kinds
    read = await get_session.asyncio("gen-1", client=staff)
    assert isinstance(read, SessionWithAnswers) and read.completion_method == "manual"

    # error paths: every one parses as its declared problem schema
    invalid = await start.asyncio_detailed(
        client=staff, body=StartRequest(candidate_id="gen-2", duration_minutes=0)
    )
    assert invalid.status_code == 422 and isinstance(invalid.parsed, ValidationProblem)
    assert invalid.parsed.code == "validation_error"
    assert invalid.parsed.errors[0].loc == ["body", "duration_minutes"]
    assert invalid.headers["content-type"] == "application/problem+json"
    bad_cursor = await list_sessions.asyncio_detailed(client=staff, cursor="not-one-of-ours")
    assert bad_cursor.status_code == 422 and isinstance(bad_cursor.parsed, ValidationProblem)
    assert bad_cursor.parsed.errors[0].loc == ["cursor"]  # found by the service, same shape
    ended = await heartbeat.asyncio_detailed("gen-1", client=candidate, body=HeartbeatRequest())
    assert ended.status_code == 409 and isinstance(ended.parsed, Problem)
    assert ended.parsed.code == "session_ended"
    assert ended.parsed.additional_properties["completion_method"] == "manual"
    missing = await get_session.asyncio_detailed("nobody", client=staff)
    assert missing.status_code == 404 and isinstance(missing.parsed, Problem)
    assert missing.parsed.code == "not_found"
    unknown = await start.asyncio_detailed(client=staff, body=StartRequest(candidate_id="gen-3"))
    assert unknown.status_code == 404 and unknown.parsed.code == "candidate_not_found"
    nobody = await state.asyncio_detailed("gen-1", client=anonymous)
    assert nobody.status_code == 401 and nobody.parsed.code == "unauthorized"
    forged = await state.asyncio_detailed("gen-1", client=candidate_client("not.a.token"))
    assert forged.status_code == 401 and forged.parsed.code == "token_invalid"
    other = await start.asyncio(
        client=staff, body=StartRequest(candidate_id="gen-4", create_candidate=True)
    )
    assert isinstance(other, StartResponse)
    elsewhere = await state.asyncio_detailed("gen-1", client=candidate_client(other.token))
    assert elsewhere.status_code == 403 and elsewhere.parsed.code == "forbidden"

    # staff analytics: typed bodies, and the chart as bytes
    report = await summary.asyncio(client=staff)
    assert isinstance(report, Summary) and report.completed == 1 and report.total == 2
    running = await live.asyncio(client=staff)
    assert isinstance(running, Live) and running.count == 1
    assert running.sessions[0].candidate_id == "gen-4"
    svg = await chart.asyncio_detailed("completion_by_method", client=staff)
    assert svg.status_code == 200 and svg.content.lstrip().startswith(b"<?xml")
    no_chart = await chart.asyncio_detailed("nope", client=staff)
    assert no_chart.status_code == 422 and isinstance(no_chart.parsed, ValidationProblem)


async def test_every_declared_problem_is_problem_json(app: Any) -> None:
    async with http(app) as client:
        document = (await client.get("/openapi.json")).json()
    statuses = set()
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    statuses.add(status)
                    assert list(response["content"]) == ["application/problem+json"]
                    schema = response["content"]["application/problem+json"]["schema"]["$ref"]
                    expected = "ValidationProblem" if status == "422" else "Problem"
                    assert schema.endswith("/" + expected)
                elif status[0] == "2" and status != "204":
                    assert response.get("content"), (status, operation["operationId"])
                    for media in response["content"].values():
                        body = media["schema"]
                        assert "$ref" in body or body.get("type") in ("string", "array")
    assert statuses >= {"401", "403", "404", "409", "413", "422", "429", "503"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    problem = document["components"]["schemas"]["ValidationProblem"]
    assert {"type", "title", "status", "code", "detail", "errors"} <= set(problem["required"])
