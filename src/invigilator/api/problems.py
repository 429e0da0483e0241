"""Errors as RFC 9457 problem+json with a stable `code`; never a traceback, never a 500 for
bad input."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
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
    domain.PageSuperseded.code: 409,
    domain.SessionNotEnded.code: 409,
    domain.SessionPurged.code: 409,
    domain.AlreadyPaused.code: 409,
    domain.NotPaused.code: 409,
    domain.TimeUp.code: 409,
    domain.InvalidInput.code: 422,
    domain.PayloadTooLarge.code: 413,
    domain.DatabaseUnavailable.code: 503,
    domain.SchemaProblem.code: 503,
    tokens.TokenInvalid.code: 401,
    tokens.TokenExpired.code: 401,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "delivery_not_failed": 409,
    "endpoint_inactive": 409,
    "request_timeout": 408,
}


# --- the OpenAPI document's view of these answers ------------------------------------------


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(
        description='Where: e.g. ["body", "answers"] or ["query", "limit"].'
    )
    msg: str
    type: str


class Problem(BaseModel):
    """An error (RFC 9457 problem details), as `application/problem+json`. Match on `code`."""

    model_config = ConfigDict(extra="allow")  # extension members, e.g. `field`, `reason`

    type: str = Field(description="`urn:invigilator:problem:<code>`.")
    title: str = Field(description="The HTTP status phrase.")
    status: int
    code: str = Field(description="Stable, machine-readable: what went wrong.")
    detail: str = Field(description="For people: what went wrong and what to do.")


class ValidationProblem(Problem):
    """A 422: the request is not valid; `errors` says where."""

    errors: list[ValidationIssue]


#: What each status means here, with the codes it can carry.
_MEANING = {
    401: "No valid credential: `unauthorized`, `token_invalid`, `token_expired`.",
    403: "Not allowed for this credential: `forbidden`.",
    404: "Not found: `not_found`, `candidate_not_found`.",
    409: "In conflict with the current state: `session_ended`, `session_already_ended`, "
    "`session_active`, `session_purged`, `already_paused`, `not_paused`, `time_up`, "
    "`delivery_not_failed`, `endpoint_inactive`.",
    413: "Too large: `payload_too_large`.",
    422: "Not valid: `validation_error`, with `errors`.",
    429: "Too many requests: `rate_limited` (see `Retry-After`).",
    503: "The database is unavailable (`database_unavailable`, see `Retry-After`) or not set "
    "up (`schema_problem`).",
}


def responses(*statuses: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: each status with its problem schema (problem+json;
    see `install`). `meanings` (`s409="…"`) says more precisely what one status means there."""
    return {
        status: {
            "model": ValidationProblem if status == 422 else Problem,
            "description": meanings.get(f"s{status}", _MEANING[status]),
        }
        for status in statuses
    }


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare error bodies as what they are, application/problem+json (FastAPI writes every
    `model` response as application/json), and drop FastAPI's own 422 schema, never sent."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[MEDIA_TYPE] = content.pop("application/json")
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


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
    extra = exc.detail
    if status == 422:  # one shape for every 422 (ValidationProblem), whoever found the fault
        field = exc.detail.get("field")
        where = [str(field)] if field else []
        extra = {**extra, "errors": [{"loc": where, "msg": exc.message, "type": "value_error"}]}
    return problem(status, exc.code, exc.message, headers, extra)


def unexpected_problem() -> JSONResponse:
    return problem(500, "internal_error", "an unexpected error; it has been logged")


def install(app: FastAPI) -> None:
    build_openapi: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_media_types(build_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

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
