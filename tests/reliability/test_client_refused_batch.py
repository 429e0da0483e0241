"""The browser client and a batch refused as too large (issue 16): from a page on another
origin, the 413 carries the app's CORS headers, so the client sees it, stops retrying the
batch, keeps what can be saved, and tells the page (and so the candidate) which answer was
refused. Headless Chromium, a real uvicorn, the real invigilator.js."""

from __future__ import annotations

import http.server
import threading
import time
from typing import Any

import httpx
import pytest
from faults import report
from playwright.sync_api import sync_playwright

from browser.conftest import (
    CHROMIUM_ARGS,
    STAFF_KEY,
    browser_settings,
    chromium_path,
    serving,
    wait_until,
)

pytestmark = pytest.mark.browser


class ExamPage:
    """A host application's exam page, on an origin of its own (a second loopback server:
    Chromium lets a loopback page call a loopback API, not a page it did not load from one)."""

    def __init__(self) -> None:
        self.html = ""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PAGE = """<!doctype html><meta charset="utf-8"><title>exam</title>
<script type="module">
import { start } from "%(api)s/static/invigilator.js";
window.errors = [];
window.client = await start({
  candidateId: "%(candidate)s", token: "%(token)s", baseUrl: "%(api)s",
  autosaveDelayMs: 20, retryInitialMs: 50, retryMaxMs: 100, maxRequestBytes: %(max)d,
  onError: (e) => window.errors.push({ code: e.code, status: e.status, question: e.question }),
});
window.ready = true;
</script>"""


@pytest.mark.parametrize("client_limit", [10**9, 4096], ids=["server_refuses", "client_knows"])
def test_a_batch_refused_as_too_large_is_not_retried_and_the_page_is_told(
    db_url: str, client_limit: int
) -> None:
    # The page's origin is known once the server has its port: the app keeps this very list
    # (CORS is on because it is not empty), and the origin is added to it below.
    origins = ["http://placeholder.invalid"]
    settings = browser_settings().model_copy(
        update={"max_body_bytes": 4096, "cors_origins": origins}
    )
    with serving(db_url, settings) as server:
        api = server.url("").rstrip("/")
        exam = ExamPage()
        origins.append(exam.origin)
        started = httpx.post(
            f"{api}/api/v1/sessions",
            json={"candidate_id": f"cors-413-{client_limit}", "create_candidate": True},
            headers={"Authorization": f"Bearer {STAFF_KEY}"},
        )
        assert started.status_code == 201, started.text
        candidate, token = started.json()["candidate_id"], started.json()["token"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page()
                patches: list[int] = []
                page.on(
                    "requestfinished",
                    lambda r: patches.append(1) if r.method == "PATCH" else None,
                )
                failed: list[str] = []
                page.on("requestfailed", lambda r: failed.append(r.url))
                exam.html = PAGE % {
                    "api": api,
                    "candidate": candidate,
                    "token": token,
                    "max": client_limit,
                }
                page.goto(f"{exam.origin}/exam")
                page.wait_for_function("window.ready === true", timeout=15_000)
                page.evaluate("client.saveAnswers({ big: 'x'.repeat(8000), small: 'kept' })")
                errors: Any = wait_until(
                    lambda: page.evaluate("window.errors").copy() or None, within=15
                )
                sent_when_told = len(patches)
                time.sleep(1.0)  # ten retry periods of this client: none may come
                sent_after = len(patches)
                pending = page.evaluate("client.pendingCount")
            finally:
                browser.close()
                exam.close()
        stored = httpx.get(
            f"{api}/api/v1/sessions/{candidate}", headers={"Authorization": f"Bearer {STAFF_KEY}"}
        ).json()["pending_answers"]
    assert errors == [{"code": "payload_too_large", "status": 413, "question": "big"}]
    assert sent_after == sent_when_told  # no retry of the refused batch
    assert pending == 0
    assert stored == {"small": "kept"}
    assert not failed, failed  # no request ended as a network error (a CORS-less 413 would)
    report(
        f"client_refused_batch_{'server' if client_limit > 4096 else 'client'}",
        patches_sent=sent_after,
        retries_after_refusal=sent_after - sent_when_told,
        answers_kept=len(stored),
    )
