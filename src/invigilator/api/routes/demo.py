"""The demo test page (`invigilator demo`, `serve --demo`): a small three-section test that uses
only the public browser client, `static/invigilator.js`.

`GET /demo` serves the page and has no side effects (link previews and prefetchers start
nothing). Its Start button posts to `POST /demo/start`, which creates a demo candidate and
session and redirects to `/demo?candidate=ID#token=…`: the token travels in the fragment, which
browsers never send to a server, so it stays out of request lines, access logs and Referer
headers. The page keeps it in sessionStorage (per tab), so a reload resumes the same session.
"""

from __future__ import annotations

import secrets
from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

from invigilator.api import tokens
from invigilator.api.deps import RuntimeDep
from invigilator.api.routes import operation_id

router = APIRouter(generate_unique_id_function=operation_id, tags=["demo"], include_in_schema=False)

#: The demo test's sections, in order (the page's sections carry the same names).
DEMO_SECTIONS = ["warm-up", "reasoning", "writing"]
DEMO_MINUTES = 15
NO_STORE = {"Cache-Control": "no-store"}


def _page() -> str:
    return resources.files("invigilator").joinpath("static", "demo.html").read_text("utf-8")


@router.get("/demo", response_class=HTMLResponse)
async def demo_page() -> HTMLResponse:
    """The demo test page. Without `?candidate=…` it offers to start a new demo test."""
    return HTMLResponse(_page(), headers=NO_STORE)


@router.post("/demo/start")
async def start_demo(runtime: RuntimeDep) -> RedirectResponse:
    """Start a fresh demo candidate's session and send the browser to it."""
    candidate_id = f"demo-{secrets.token_hex(8)}"
    started = await runtime.sessions.start(
        candidate_id,
        duration_minutes=DEMO_MINUTES,
        sections=DEMO_SECTIONS,
        create_candidate=True,
        actor="demo",
    )
    token, _ = tokens.for_session(started.session, runtime.policy, runtime.secret_key)
    return RedirectResponse(
        f"/demo?candidate={quote(candidate_id)}#token={token}", status_code=303, headers=NO_STORE
    )
