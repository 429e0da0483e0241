"""Errors as RFC 9457 problem+json with a stable `code`; never a traceback, never a 500 for
bad input."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from invigilator import domain
from invigilator.api import tokens

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

#: HTTP status for each domain error code: the one table of it.
STATUS_OF_CODE: dict[str, int] = {
    domain.SessionNotFound.code: 404,
    domain.CandidateNotFound.code: 404,
    domain.SessionEnded.code: 409,
    domain.SessionAlreadyEnded.code: 409,
    domain.InvalidInput.code: 422,
    domain.PayloadTooLarge.code: 413,
    domain.DatabaseUnavailable.code: 503,
    domain.SchemaProblem.code: 503,
    tokens.TokenInvalid.code: 401,
    tokens.TokenExpired.code: 401,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "request_timeout": 408,
}


class ApiError(domain.InvigilatorError):
    """An error of the HTTP layer itself (auth, routing), with its own code."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message, **detail)
        self.code = code


def problem(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = {
        **(extra or {}),  # extension members never override the standard ones below
        "type": f"urn:invigilator:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def domain_problem(exc: domain.InvigilatorError) -> JSONResponse:
    """The answer to a domain error (the regular routes and the heartbeat fast path)."""
    status = STATUS_OF_CODE.get(exc.code, 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "2"}
    return problem(status, exc.code, exc.message, headers, exc.detail)


def unexpected_problem() -> JSONResponse:
    return problem(500, "internal_error", "an unexpected error; it has been logged")


def install(app: FastAPI) -> None:
    @app.exception_handler(domain.InvigilatorError)
    async def _domain(request: Request, exc: domain.InvigilatorError) -> JSONResponse:
        return domain_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return problem(
            422, "validation_error", "the request is not valid", None, {"errors": errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem(exc.status_code, code, detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return unexpected_problem()


class ErrorBoundary:
    """The innermost middleware: an unexpected error becomes the 500 problem here, inside the
    stack, so it passes the request id, security and CORS middleware like any answer.
    (Starlette answers an exception from a route in ServerErrorMiddleware, outside all of
    them; that handler stays for errors in the middleware itself.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:  # half an answer is out: only closing the connection can tell
                raise
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await unexpected_problem()(scope, receive, send)
