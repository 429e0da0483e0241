"""/docs and /redoc with no internet: headless Chromium, every request to anything but the
app's own origin aborted, renders Swagger UI and Redoc from the assets the package ships."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Route, expect

from browser.conftest import LiveServer

pytestmark = pytest.mark.browser


def offline(context: BrowserContext, server: LiveServer) -> list[str]:
    """Abort whatever leaves the app's origin; the list collects what was tried."""
    blocked: list[str] = []

    def route(route: Route) -> None:
        url = route.request.url
        if url.startswith(server.base_url + "/") or url.startswith("data:"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", route)
    return blocked


def test_swagger_ui_renders_offline(
    context: BrowserContext, live_server: LiveServer, artifacts: Path
) -> None:
    blocked = offline(context, live_server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    page.goto(live_server.url("/docs"))
    # Rendering parses the whole OpenAPI document in the page: seconds on a busy 2-core machine.
    title = page.locator(".swagger-ui .info .title")
    expect(title).to_contain_text("Invigilator", timeout=30_000)
    expect(page.locator(".opblock-tag-section").first).to_be_visible()  # the operations
    expect(page.locator("#operations-staff-start_session")).to_be_visible()
    page.screenshot(path=str(artifacts / "docs-offline.png"), full_page=False)
    assert blocked == [] and errors == []


def test_redoc_renders_offline(
    context: BrowserContext, live_server: LiveServer, artifacts: Path
) -> None:
    blocked = offline(context, live_server)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(live_server.url("/redoc"))
    # Redoc parses the whole OpenAPI document in the page: seconds on a busy 2-core machine.
    expect(page.locator("h1").first).to_contain_text("Invigilator", timeout=30_000)
    expect(page.get_by_role("menuitem", name="staff")).to_be_visible()
    page.screenshot(path=str(artifacts / "redoc-offline.png"), full_page=False)
    assert blocked == []  # its logo is refused by the page's CSP before any request
    assert [m for m in console if "Content Security Policy" in m and "img-src" not in m] == []
