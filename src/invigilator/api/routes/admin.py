"""The staff dashboard's pages and its sign-in: a staff key in, a signed HttpOnly cookie out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from invigilator.api import tokens
from invigilator.api.deps import (
    STAFF_COOKIE,
    RuntimeDep,
    match_staff_key,
    same_origin,
    staff_from_cookie,
)
from invigilator.api.routes import operation_id
from invigilator.domain import InvigilatorError

router = APIRouter(generate_unique_id_function=operation_id, include_in_schema=False)

SIGN_IN_TTL = timedelta(hours=12)


def _page(name: str) -> HTMLResponse:
    html = resources.files("invigilator").joinpath("static", name).read_text("utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


async def _signed_in(request: Request, runtime: RuntimeDep) -> bool:
    try:
        return await staff_from_cookie(request, runtime) is not None
    except InvigilatorError:
        return False


@router.get("/admin")
async def dashboard(request: Request, runtime: RuntimeDep) -> Response:
    if not await _signed_in(request, runtime):
        return _page("admin-login.html")
    return _page("admin.html")


@router.post("/admin/login")
async def login(request: Request, runtime: RuntimeDep) -> Response:
    # The sign-in form posts application/x-www-form-urlencoded; one field is parsed here rather
    # than adding a multipart library for it.
    body = (await request.body())[:2048].decode("utf-8", errors="replace")
    key = parse_qs(body).get("key", [""])[0]
    # Only this site's own sign-in form may sign a browser in (no login CSRF).
    staff = match_staff_key(key, runtime) if same_origin(request) else None
    if staff is None:
        return RedirectResponse("/admin?error=1", status_code=303)
    response = RedirectResponse("/admin", status_code=303)
    # JWT expiry is checked against this process's clock, so it is issued on that clock too.
    issued = datetime.now(UTC)
    response.set_cookie(
        STAFF_COOKIE,
        tokens.issue_staff_session(staff.fingerprint, runtime.secret_key, issued, SIGN_IN_TTL),
        max_age=int(SIGN_IN_TTL.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/admin/logout")
async def logout(request: Request, runtime: RuntimeDep) -> Response:
    # Deleting the cookie only asks this browser to forget it; a copy (another tab's request
    # in flight, a stolen cookie) would work until it expires. The sign-in ends on the server.
    cookie = request.cookies.get(STAFF_COOKIE)
    if cookie:
        try:
            sign_in = tokens.verify_staff_session(cookie, runtime.secret_key)
        except InvigilatorError:
            sign_in = None  # expired or forged: nothing to end
        if sign_in is not None:
            await runtime.sessions.end_staff_sign_in(sign_in.sign_in_id, sign_in.expires_at)
    response = RedirectResponse("/admin", status_code=303)
    response.delete_cookie(STAFF_COOKIE, path="/", httponly=True, samesite="strict")
    return response
