"""Bounded request bodies (ASGI middleware): a size limit enforced while the body streams in,
so a 50 MB body is refused after the limit, not after it has been read; and a time limit, so
a body that never completes (a slow or stalled client) gets a 408 instead of holding the
connection for as long as the client likes."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: When this request's body must have arrived (the event loop's clock), shared with the
#: heartbeat fast path, which reads bodies before this middleware does.
BODY_DEADLINE_SCOPE = "invigilator.body_deadline"


def body_deadline(scope: Scope, timeout: float) -> float:
    deadline: float = scope.setdefault(
        BODY_DEADLINE_SCOPE, asyncio.get_running_loop().time() + timeout
    )
    return deadline


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send, _TooLarge())
                    return
        seen = 0
        refused: _Refusal | None = None
        answered = False
        body_done = False
        deadline = body_deadline(scope, self.body_timeout) if self.body_timeout else None

        async def limited_receive() -> Message:
            nonlocal seen, refused, body_done
            if body_done or deadline is None:
                # After the body, receive() waits for the client to leave: no time limit.
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    refused = _TimedOut()
                    raise refused from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    refused = _TooLarge()
                    raise refused
            return message

        async def guarded_send(message: Message) -> None:
            # Once refused, whatever the app answers (frameworks turn a failed body read into
            # a 400) is replaced by the 413 or 408.
            nonlocal answered
            if refused is not None:
                if not answered:
                    answered = True
                    await self._refuse(send, refused)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not answered:
            await self._refuse(send, refused)

    async def _refuse(self, send: Send, refusal: _Refusal) -> None:
        if isinstance(refusal, _TooLarge):
            status, title, code = 413, "Request Entity Too Large", "payload_too_large"
            detail = f"the request body is larger than {self.max_bytes} bytes"
        else:
            status, title, code = 408, "Request Timeout", "request_timeout"
            detail = f"the request body did not arrive within {self.body_timeout:g} s"
        body = json.dumps(
            {
                "type": f"urn:invigilator:problem:{code}",
                "title": title,
                "status": status,
                "code": code,
                "detail": detail,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _Refusal(Exception):
    pass


class _TooLarge(_Refusal):
    pass


class _TimedOut(_Refusal):
    pass
