"""examples/host_app end to end against a real `invigilator serve` (a subprocess, on the test
database): the app starts a session over the staff API, serves the page that embeds the JS
client, and receives and verifies the webhooks. Then SIGTERM: serve stops gracefully, having
logged JSON lines with no token in them."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.api import SECRET, STAFF_KEY
from support.cli import start_cli, stop_process
from support.ports import free_port
from support.waiting import wait_for_http, wait_until

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"acme-recruiting-example-secret!!").decode()


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def servers(db_url: str, ports: tuple[int, int], tmp_path: Path) -> Iterator[dict[str, object]]:
    inv_port, host_port = ports
    inv_url, host_url = f"http://127.0.0.1:{inv_port}", f"http://127.0.0.1:{host_port}"
    env = {
        "INVIGILATOR_DATA_DIR": str(tmp_path),
        "INVIGILATOR_SECRET_KEY": SECRET,
        "INVIGILATOR_ADMIN_KEYS": STAFF_KEY,
        "INVIGILATOR_WEBHOOK_URL": f"{host_url}/webhooks/invigilator",
        "INVIGILATOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "INVIGILATOR_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
        "INVIGILATOR_CORS_ORIGINS": host_url,
        "INVIGILATOR_LOG_LEVEL": "INFO",
    }
    invigilator = start_cli("serve", "--port", str(inv_port), "--no-demo", db_url=db_url, env=env)
    host_env = {
        **os.environ,
        "INVIGILATOR_URL": inv_url,
        "INVIGILATOR_STAFF_KEY": STAFF_KEY,
        "INVIGILATOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    host = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(REPO / "examples/host_app"),
         "--host", "127.0.0.1", "--port", str(host_port), "--log-level", "warning"],
        env=host_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_http(f"{inv_url}/healthz", invigilator)
        wait_for_http(f"{host_url}/events", host)
        yield {"inv_url": inv_url, "host_url": host_url, "invigilator": invigilator}
    finally:
        stop_process(host)
        stop_process(invigilator)


def test_host_app_runs_a_test_and_hears_how_it_ended(servers: dict[str, object]) -> None:
    inv_url, host_url = str(servers["inv_url"]), str(servers["host_url"])
    invigilator = servers["invigilator"]
    assert isinstance(invigilator, subprocess.Popen)
    with httpx.Client(timeout=10) as http:
        page = http.get(f"{host_url}/test/cand-host")
        assert page.status_code == 200, page.text
        assert f'from "{inv_url}/static/invigilator.js"' in page.text
        token = json.loads(
            re.search(r"token: (&quot;.*?&quot;)", page.text)[1].replace("&quot;", '"')
        )  # type: ignore[index]
        script = http.get(f"{inv_url}/static/invigilator.js", headers={"Origin": host_url})
        assert script.status_code == 200
        assert script.headers["access-control-allow-origin"] == host_url  # a module, cross-origin

        # what the client in that page does: beat, save, submit
        base = f"{inv_url}/api/v1/sessions/cand-host"
        auth = {"Authorization": f"Bearer {token}", "Origin": host_url}
        assert (
            http.post(f"{base}/heartbeat", json={"active": True}, headers=auth).status_code == 200
        )
        saved = http.patch(
            f"{base}/answers", json={"answers": {"q1": "hire me"}, "seq": 1}, headers=auth
        )
        assert saved.status_code == 200
        assert http.post(f"{base}/complete", headers=auth).status_code == 200

        def two_events() -> list[dict[str, object]]:
            events: list[dict[str, object]] = http.get(f"{host_url}/events").json()
            return events if len(events) >= 2 else []

        events = wait_until(two_events, "the host app to hear two webhooks", interval=0.1)
        assert [e["type"] for e in events] == ["session.started", "session.completed"]
        completed = events[1]["session"]
        assert isinstance(completed, dict) and completed["completion_method"] == "manual"

        forged = http.post(
            f"{host_url}/webhooks/invigilator",
            content=b'{"id": "x", "type": "session.completed"}',
            headers={
                "webhook-id": "x",
                "webhook-timestamp": str(int(time.time())),
                "webhook-signature": "v1,AAAA",
            },
        )
        assert forged.status_code == 400

    invigilator.send_signal(signal.SIGTERM)  # graceful: requests done, then the lifespan ends
    _, stderr = invigilator.communicate(timeout=20)
    # uvicorn re-raises the signal once it has shut down cleanly: -SIGTERM, not a crash
    assert invigilator.returncode in (0, -signal.SIGTERM), stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert "webhook worker stopped" in messages  # stopped between deliveries, not killed
    assert any(m.startswith("sweeper stopped") for m in messages)
    access = [line for line in lines if line.get("logger") == "invigilator.access"]
    assert any(line["route"] == "/static/{path}" for line in access)
    assert any(line["route"] == "/api/v1/sessions/{candidate_id}/complete" for line in access)
    assert token not in stderr and STAFF_KEY not in stderr and "hire me" not in stderr
