"""Acme Recruiting: a minimal host app for Invigilator.

It starts a candidate's test session over the staff API, serves the test page (which embeds
Invigilator's browser client), and receives signed webhooks (Standard Webhooks, verified with
the `standardwebhooks` package). Run it beside `invigilator serve`:

    INVIGILATOR_URL=http://127.0.0.1:8000 INVIGILATOR_STAFF_KEY=… INVIGILATOR_WEBHOOK_SECRET=… \
        uvicorn app:app --port 8080
    # and Invigilator with INVIGILATOR_WEBHOOK_URL=http://127.0.0.1:8080/webhooks/invigilator,
    # the same INVIGILATOR_WEBHOOK_SECRET and INVIGILATOR_CORS_ORIGINS=http://127.0.0.1:8080
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from standardwebhooks import Webhook, WebhookVerificationError

INVIGILATOR_URL = os.environ.get("INVIGILATOR_URL", "http://127.0.0.1:8000").rstrip("/")
STAFF_KEY = os.environ["INVIGILATOR_STAFF_KEY"]
WEBHOOK_SECRET = os.environ["INVIGILATOR_WEBHOOK_SECRET"]

app = FastAPI(title="Acme Recruiting")
received: dict[str, dict[str, Any]] = {}  # webhook id -> event (a real app: a table, unique id)


webhook = Webhook(WEBHOOK_SECRET)  # the Standard Webhooks library, as it is


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Your test</title></head>
<body><h1>Your test</h1><p>Time left: <span id="clock">…</span></p>
<textarea name="q1" id="q1"></textarea> <button id="submit">Submit</button>
<script type="module">
import {{ start }} from "{base}/static/invigilator.js";
const clock = document.getElementById("clock"), q1 = document.getElementById("q1");
const client = await start({{
  baseUrl: "{base}", candidateId: {candidate}, token: {token},
  onResume: ({{ answers }}) => {{ q1.value = answers.q1 ?? ""; }},
  onTick: (seconds) => {{ clock.textContent = seconds; }},
  onEnd: () => {{ document.body.textContent = "Thank you, your test is in."; }},
}});
q1.addEventListener("input", () => client.saveAnswer("q1", q1.value));
document.getElementById("submit").addEventListener("click", () => client.submit());
</script></body></html>"""


@app.get("/test/{candidate_id}", response_class=HTMLResponse)
async def test_page(candidate_id: str) -> str:
    """Start (or resume) the candidate's session and serve the page that runs it."""
    async with httpx.AsyncClient(base_url=INVIGILATOR_URL, timeout=10) as invigilator:
        response = await invigilator.post(
            "/api/v1/sessions",
            json={"candidate_id": candidate_id, "duration_minutes": 30, "create_candidate": True},
            headers={"Authorization": f"Bearer {STAFF_KEY}"},
        )
    if response.status_code not in (200, 201):
        raise HTTPException(502, response.json().get("detail", "Invigilator refused"))
    session = response.json()
    return PAGE.format(
        base=html.escape(INVIGILATOR_URL),
        candidate=html.escape(json.dumps(candidate_id)),
        token=html.escape(json.dumps(session["token"])),
    )


@app.post("/webhooks/invigilator")
async def invigilator_webhook(request: Request) -> dict[str, bool]:
    try:
        event = webhook.verify(await request.body(), dict(request.headers))
    except WebhookVerificationError:
        raise HTTPException(400, "bad signature") from None
    if event["id"] not in received:  # delivered at least once: act once per id
        received[event["id"]] = event
        # Here: grade a completed test, email the recruiter, call a silent candidate…
    return {"ok": True}


@app.get("/events")
async def events() -> list[dict[str, Any]]:
    """What arrived, oldest first (for this example and its test)."""
    return list(received.values())
