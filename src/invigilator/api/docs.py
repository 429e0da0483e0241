"""/docs (Swagger UI) and /redoc served with their assets from this server: they work with
no internet, and nothing a staff member opens loads code from a CDN.

The assets come from the `fastapi-offline` wheel (its Swagger UI and Redoc bundles, kept
current there and seen by pip-audit); only its static files are used, not its FastAPI factory.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    """The page's own Content-Security-Policy: scripts from this server plus the page's one
    inline start-up script (by hash), images, fonts and requests from this server only (Redoc
    would otherwise fetch its logo from a CDN). Both bundles style with inline styles."""
    scripts = " ".join(
        ["'self'"]
        + [
            "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
            for script in _INLINE_SCRIPT.findall(bytes(page.body).decode())
        ]
    )
    page.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    return page


def install(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets to an app made with `docs_url=None, redoc_url=None`."""
    directory = resources.files("fastapi_offline").joinpath("static")
    app.mount(ASSETS, StaticFiles(directory=str(directory)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - API docs",
                swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
                oauth2_redirect_url=root + oauth2_redirect,
            )
        )

    # What FastAPI serves beside its own /docs (Swagger UI's OAuth2 flow, which no route here
    # uses: bearer keys only); with the pages' strict CSP, as before.
    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - API reference",
                redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )
