"""The heartbeat's fast path: most requests the service ever gets are heartbeats, and for them
the framework's routing, dependency injection and response validation cost more than the
database write. This ASGI middleware answers `POST /api/v1/sessions/{candidate_id}/heartbeat`
directly when everything is ordinary: a valid token for that candidate, a body that is empty
or `{"active": true|false}`, and a session that takes the heartbeat. Anything else — no or
bad token, another candidate's token, an odd body, a refused session — is handed, untouched,
to the regular route (api/routes/candidate.py), which owns every error answer. Both paths
write through the same HeartbeatBatcher and answer with the same HeartbeatResponse model.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from invigilator.api import schemas, tokens
from invigilator.domain import MAX_CANDIDATE_ID_LENGTH, InvigilatorError
from invigilator.validation import PRINTABLE

_PATH = re.compile(r"/api/v1/sessions/([^/]+)/heartbeat")
_MAX_BODY = 256  # an ordinary heartbeat body is `{"active": true}`


@dataclass(frozen=True)
class _Route:
    """What the observability middleware reads from scope["route"] for its labels."""

    path: str = "/api/v1/sessions/{candidate_id}/heartbeat"


_ROUTE = _Route()


class HeartbeatFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        candidate_id = match[1] if match else None
        token = _bearer(scope) if candidate_id else None
        runtime = getattr(scope["app"].state, "runtime", None) if token else None
        if (
            candidate_id is None
            or token is None
            or runtime is None
            or len(candidate_id) > MAX_CANDIDATE_ID_LENGTH
            or not PRINTABLE.match(candidate_id)
        ):
            await self.app(scope, receive, send)
            return

        body, more = await _read_body(receive)
        replay = _replaying(body, more, receive)
        active = None if more else _active(body)
        if active is None or not _opens(token, candidate_id, runtime.secret_key):
            await self.app(scope, replay, send)
            return
        try:
            clock = await runtime.heartbeats.beat(candidate_id, active=active)
        except InvigilatorError:  # refused: the route finalizes, explains and answers
            await self.app(scope, replay, send)
            return
        scope["route"] = _ROUTE
        answer = schemas.HeartbeatResponse.model_construct(
            **schemas.clock(clock),
            next_heartbeat_seconds=runtime.policy.heartbeat_interval.total_seconds(),
        ).model_dump_json()
        payload = answer.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _opens(token: str, candidate_id: str, secret: str) -> bool:
    try:
        claims = tokens.verify(token, secret)
    except InvigilatorError:
        return False
    return hmac.compare_digest(claims.candidate_id.encode(), candidate_id.encode())


def _active(body: bytes) -> bool | None:
    """The `active` flag of an ordinary heartbeat body; None for anything else."""
    if not body.strip():
        return False
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not set(data) <= {"active"}:
        return None
    active = data.get("active", False)
    return active if isinstance(active, bool) else None


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """Up to _MAX_BODY bytes of the body, and whether there is more than that."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if size > _MAX_BODY:
            return b"".join(chunks), True


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
