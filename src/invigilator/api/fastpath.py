"""The heartbeat's fast path: most requests the service ever gets are heartbeats, and for them
the framework's middleware chain, routing, dependency injection and response validation cost
more than the database write.

`InvigilatorAPI` is FastAPI with one thing in front of its whole stack: `HeartbeatFastPath`
answers `POST /api/v1/sessions/{candidate_id}/heartbeat` itself, in one pass, when everything
is ordinary: a valid token for that candidate, a body that is empty or `{"active": bool}` sent
as JSON (the route's content-type rule), within the rate limits, and a session that takes the
heartbeat. It does what the middleware would have done for that request by calling the same
functions: the request id and the access log and metrics (`observability`), the rate limits
(`ratelimit.RateLimits`), the security headers (`headers`). Anything else — no or bad token,
another candidate's token, an odd body — is handed, untouched (the body read so far is
replayed), to the regular stack, which owns those answers. Once the heartbeat is taken, the
fast path answers its outcome itself, whatever it is: the 200, a 429 from the shared rate
limits, the problem of a refused heartbeat (the session ended, or is unknown:
`service.Sessions.heartbeat` explains it), a 503 when the database is unavailable, a 500 for
the unexpected. Both paths call the same service operation and answer with the same
HeartbeatResponse and problem bodies.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from invigilator import metrics
from invigilator.api import observability, problems, schemas, tokens
from invigilator.api.headers import RAW_SECURITY_HEADERS
from invigilator.api.limits import body_deadline
from invigilator.api.paths import HEARTBEAT_PATH
from invigilator.api.ratelimit import RateLimits
from invigilator.domain import InvigilatorError
from invigilator.logs import REQUEST_ID
from invigilator.validation import is_candidate_id

log = logging.getLogger(__name__)

_PATH = re.compile(re.escape(HEARTBEAT_PATH).replace(re.escape("{candidate_id}"), "([^/]+)"))
_MAX_BODY = 256  # an ordinary heartbeat body is `{"active": true}`
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class _Route:
    """What observability reads from scope["route"] for its labels."""

    path: str = HEARTBEAT_PATH


_ROUTE = _Route()


class InvigilatorAPI(FastAPI):
    """FastAPI, with the heartbeat fast path in front of the middleware stack."""

    heartbeat_fast_path: HeartbeatFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.heartbeat_fast_path
        if fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            await fast(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


class HeartbeatFastPath:
    def __init__(self, app: FastAPI, limits: RateLimits, cors: CORSMiddleware | None) -> None:
        self.app = app
        self.limits = limits
        self.cors = cors  # the app's own CORS settings, applied to the fast path's answers
        self.answered = 0  # heartbeats this path answered itself, taken or refused (tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, regular: ASGIApp) -> None:
        match = _PATH.fullmatch(scope["path"])
        candidate_id = match[1] if match else None
        token = tokens.bearer(scope["headers"]) if candidate_id else None
        runtime = getattr(self.app.state, "runtime", None) if token else None
        if (
            candidate_id is None
            or token is None
            or runtime is None
            or not is_candidate_id(candidate_id)
            or not tokens.opens(token, candidate_id, runtime.secret_key)  # before reading any body
        ):
            await regular(scope, receive, send)
            return

        try:
            timeout = runtime.settings.read_body_timeout_seconds
            async with asyncio.timeout_at(body_deadline(scope, timeout)):
                body, more, gone = await _read_body(receive)
        except TimeoutError:  # the route's BodySizeLimit answers the 408 (its deadline passed)
            await regular(scope, receive, send)
            return
        if gone:  # the client left before its body arrived: nobody to answer
            return
        replay = _replaying(body, more, receive)
        active = (
            None
            if more or len(body) > _MAX_BODY or (body and not _json_content(scope["headers"]))
            else _active(body)
        )
        if active is None:
            await regular(scope, replay, send)
            return

        started = time.perf_counter()
        request_id = observability.request_id_from(scope["headers"])
        scope[observability.REQUEST_ID_SCOPE] = request_id  # kept if handed over below
        token_var = REQUEST_ID.set(request_id)
        scope["route"] = _ROUTE
        metrics.HTTP_IN_PROGRESS.inc()
        answer = await self._answer(scope, runtime, candidate_id, active)
        try:
            await answer(scope, replay, self._decorated(send, scope, request_id))
        finally:
            metrics.HTTP_IN_PROGRESS.dec()
            observability.record(
                scope, answer.status_code, time.perf_counter() - started, request_id
            )
            sampler = getattr(self.app.state, "pool_sampler", None)
            if sampler is not None:
                sampler()
            REQUEST_ID.reset(token_var)

    async def _answer(self, scope: Scope, runtime: Any, candidate_id: str, active: bool) -> Any:
        """The response for an ordinary heartbeat: taken, refused, or failed."""
        refused = self.limits.take(scope, candidate_id, token_opens=True)
        if refused is not None:
            return refused
        try:
            clock = await runtime.sessions.heartbeat(candidate_id, active=active)
        except InvigilatorError as exc:  # ended, unknown, or the database unavailable
            self.answered += 1
            return problems.domain_problem(exc)
        except Exception:
            log.exception("unexpected error on a heartbeat")
            return problems.unexpected_problem()
        self.answered += 1
        return _Json(schemas.heartbeat_response(clock, runtime.policy).model_dump_json().encode())

    def _decorated(self, send: Send, scope: Scope, request_id: str) -> Send:
        """What the middleware chain adds to every response: the request id, the security
        headers, and CORS (through the app's own CORSMiddleware settings)."""

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *RAW_SECURITY_HEADERS,
                ]
            await send(message)

        if self.cors is None:
            return sending
        return functools.partial(self.cors.send, send=sending, request_headers=Headers(scope=scope))


class _Json:
    """A 200 JSON answer, sent as two ASGI messages (what a Response does, minus its cost)."""

    status_code = 200

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", str(len(self.payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": self.payload})


def _json_content(headers: list[tuple[bytes, bytes]]) -> bool:
    """FastAPI's rule for a body it reads as JSON (`strict_content_type`): a content type of
    application/json or application/*+json. One rule on both paths: a body the route would
    refuse is handed to it, to be refused there."""
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (
                media.startswith(b"application/") and media.endswith(b"+json")
            )
    return False


def _active(body: bytes) -> bool | None:
    """The `active` flag of an ordinary heartbeat body; None for anything else."""
    if not body:  # as the route: only a body of no bytes at all is no body
        return False
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not set(data) <= {"active"}:
        return None
    active = data.get("active", False)
    return active if isinstance(active, bool) else None


async def _read_body(receive: Receive) -> tuple[bytes, bool, bool]:
    """The body read so far (up to about _MAX_BODY bytes), whether more is coming, and whether
    the client disconnected instead."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False, True
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False, False
        if size > _MAX_BODY:
            return b"".join(chunks), True, False


def _replaying(body: bytes, more: bool, receive: Receive) -> Receive:
    """A receive that first gives back what was already read, then the rest of the stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
