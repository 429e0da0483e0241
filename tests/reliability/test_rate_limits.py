"""Rate limits on the candidate API: per candidate and per client address, configurable, a 429
problem+json with `Retry-After` over them, and defaults that normal use never meets."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from invigilator.api.app import create_app
from invigilator.api.ratelimit import TokenBuckets, candidate_call
from invigilator.config import Settings
from support.api import STAFF_KEY, Api, assert_problem, make_settings
from support.db import ANSWERS


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    buckets = TokenBuckets(per_minute=60, burst=3)  # one a second after three at once
    assert [buckets.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", 0.0) == pytest.approx(1.0)  # Retry-After: one second
    assert buckets.take("k", 0.5) == pytest.approx(0.5)
    assert buckets.take("k", 1.0) == 0.0
    assert buckets.take("other", 1.0) == 0.0  # keys are independent
    assert [buckets.take("k", 100.0) for _ in range(4)][-1] > 0  # refills to the burst only


def test_buckets_forget_the_least_recently_used_keys() -> None:
    buckets = TokenBuckets(per_minute=60, burst=1, max_keys=2)
    for key in ("a", "b", "c"):
        buckets.take(key, 0.0)
    assert buckets.take("b", 0.0) > 0  # kept: still empty
    assert buckets.take("a", 0.0) == 0.0  # forgotten, so full again: memory stays bounded


@pytest.mark.parametrize(
    ("method", "path", "candidate"),
    [
        ("PATCH", "/api/v1/sessions/alice/answers", "alice"),
        ("POST", "/api/v1/sessions/alice/heartbeat", "alice"),
        ("GET", "/api/v1/sessions/alice/state", "alice"),
        ("POST", "/api/v1/sessions/alice/tab-close", "alice"),
        ("GET", "/api/v1/sessions/alice/events", None),  # the staff timeline
        ("POST", "/api/v1/sessions/alice/events", "alice"),  # a client event
        ("POST", "/api/v1/sessions/alice/extend", None),
        ("GET", "/api/v1/sessions", None),
        ("GET", "/healthz", None),
    ],
)
def test_only_the_candidate_api_is_limited(method: str, path: str, candidate: str | None) -> None:
    assert candidate_call(method, path) == candidate


def simulate(settings: Settings, candidates: int, seconds: int) -> int:
    """Refusals for `candidates` behind one address over `seconds` of a busy test: each loads
    the page (state + heartbeat), beats every 15 s, saves every 5 s (every second during a
    2-minute burst of quick multiple-choice clicks), reports a focus change a minute and
    reloads every 20 minutes. Candidates are not in lockstep: each has its own phase."""
    per_candidate = TokenBuckets(
        settings.rate_limit_candidate_per_minute, settings.rate_limit_candidate_burst
    )
    per_ip = TokenBuckets(settings.rate_limit_ip_per_minute, settings.rate_limit_ip_burst)
    refused = 0
    for tick in range(seconds):
        for c in range(candidates):
            t = tick + c  # this candidate's phase
            clicking = (c * 53) % 780 <= tick < (c * 53) % 780 + 120
            calls = 2 if tick == 0 or t % 1200 == 0 else 0  # (re)load: state + heartbeat
            calls += (t % 15 == 0) + (t % 60 == 0)
            calls += 1 if clicking else t % 5 == 0
            for _ in range(calls):
                now = tick + c / candidates
                if per_ip.take("hall", now) or per_candidate.take(f"c{c}", now):
                    refused += 1
    return refused


def test_normal_use_never_meets_the_default_limits() -> None:
    defaults = Settings()
    assert simulate(defaults, candidates=1, seconds=3 * 3600) == 0
    assert simulate(defaults, candidates=300, seconds=900) == 0  # an exam hall behind one NAT


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVIGILATOR_RATE_LIMIT_CANDIDATE_PER_MINUTE", "12")
    monkeypatch.setenv("INVIGILATOR_RATE_LIMIT_CANDIDATE_BURST", "4")
    monkeypatch.setenv("INVIGILATOR_RATE_LIMIT_IP_PER_MINUTE", "0")
    settings = Settings()
    assert settings.rate_limit_candidate_per_minute == 12
    assert settings.rate_limit_candidate_burst == 4
    assert settings.rate_limit_ip_per_minute == 0  # off


def answers_of(db: psycopg.Connection[Any], candidate_id: str) -> Any:
    return db.execute(
        "SELECT "
        f"{ANSWERS} AS pending_answers,"
        " (SELECT count(*) FROM test_session_event) FROM test_session"
        " WHERE candidate_id = %s",
        (candidate_id,),
    ).fetchone()


async def test_a_candidate_over_the_limit_gets_429_and_nothing_changes(
    api_with: Any, db: psycopg.Connection[Any]
) -> None:
    async with api_with(rate_limit_candidate_per_minute=1, rate_limit_candidate_burst=5) as api:
        token = (await api.start("alice"))["token"]
        for seq in range(5):
            body = {"answers": {"q": seq}, "seq": seq}
            response = await api.as_candidate("PATCH", "alice", "answers", token, json=body)
            assert response.status_code == 200
        before = answers_of(db, "alice")
        refused = await api.as_candidate(
            "PATCH", "alice", "answers", token, json={"answers": {"q": 99}, "seq": 99}
        )
        body = assert_problem(refused, 429, "rate_limited")
        assert body["limit"] == "candidate"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-content-type-options"] == "nosniff"
        assert answers_of(db, "alice") == before  # refused before it reached the database
        # Another candidate has an allowance of their own.
        bob = (await api.start("bob"))["token"]
        assert (await api.as_candidate("POST", "bob", "heartbeat", bob)).status_code == 200
        # Staff routes are not limited.
        for _ in range(10):
            response = await api.client.get("/api/v1/sessions/alice", headers=api.staff)
            assert response.status_code == 200


async def test_bad_tokens_cannot_use_up_another_candidates_allowance(api_with: Any) -> None:
    async with api_with(rate_limit_candidate_per_minute=1, rate_limit_candidate_burst=3) as api:
        token = (await api.start("alice"))["token"]
        mallory = (await api.start("mallory"))["token"]
        for _ in range(10):
            assert_problem(
                await api.as_candidate("POST", "alice", "heartbeat", "forged.token.here"),
                401,
                "token_invalid",
            )
            assert_problem(
                await api.as_candidate("POST", "alice", "heartbeat", mallory), 403, "forbidden"
            )
        for _ in range(3):
            assert (await api.as_candidate("POST", "alice", "heartbeat", token)).status_code == 200


async def test_one_address_over_its_limit_gets_429_others_do_not(db_url: str) -> None:
    settings = make_settings(rate_limit_ip_per_minute=1, rate_limit_ip_burst=6)
    app = create_app(settings, database_url=db_url)
    async with app.router.lifespan_context(app):

        def client(ip: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(ip, 50000))
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        async with client("203.0.113.7") as hall, client("198.51.100.9") as home:
            tokens = [(await Api(hall).start(f"c{i}"))["token"] for i in range(8)]
            statuses = [
                (await Api(hall).as_candidate("POST", f"c{i}", "heartbeat", t)).status_code
                for i, t in enumerate(tokens)
            ]
            assert statuses == [200] * 6 + [429] * 2  # the address, whoever the candidate
            refused = await Api(hall).as_candidate("POST", "c0", "heartbeat", tokens[0])
            assert assert_problem(refused, 429, "rate_limited")["limit"] == "address"
            assert refused.headers["retry-after"]
            # Unauthenticated floods count against the address too, and stop at it.
            assert (await hall.post("/api/v1/sessions/c0/heartbeat")).status_code == 429
            ok = await Api(home).as_candidate("POST", "c1", "heartbeat", tokens[1])
            assert ok.status_code == 200
            staff = await hall.get(
                "/api/v1/sessions", headers={"Authorization": f"Bearer {STAFF_KEY}"}
            )
            assert staff.status_code == 200
