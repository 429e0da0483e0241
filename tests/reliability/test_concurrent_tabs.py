"""Two tabs of one candidate saving at the same time through the API: different questions are
all kept (no lost update), and for the same question the highest `seq` wins, whatever order
the saves arrive and commit in."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg
from faults import report

from support.api import Api
from support.db import ANSWERS, SEQS


async def test_two_tabs_saving_concurrently_lose_nothing(
    api_with: Any, db: psycopg.Connection[Any]
) -> None:
    async with api_with(rate_limit_candidate_per_minute=0) as api:  # 80 saves in a second
        await two_tabs(api, db)


async def two_tabs(api: Api, db: psycopg.Connection[Any]) -> None:
    token = (await api.start("alice"))["token"]
    rng = random.Random(3)
    sent: dict[int, tuple[str, Any]] = {}  # seq -> (tab, value of `shared`)
    responses: list[dict[str, Any]] = []

    async def tab(name: str, seqs: list[int]) -> None:
        for i, seq in enumerate(seqs):
            value = f"{name} edit {i} (seq {seq})"
            sent[seq] = (name, value)
            response = await api.as_candidate(
                "PATCH",
                "alice",
                "answers",
                token,
                json={"answers": {f"{name}{i}": value, "shared": value}, "seq": seq},
            )
            assert response.status_code == 200, response.text
            responses.append({**response.json(), "seq": seq})
            await asyncio.sleep(rng.uniform(0, 0.003))

    # Each tab counts its own seqs; they interleave, as two clocks would.
    seqs = rng.sample(range(1, 10_000), 80)
    await asyncio.gather(tab("a", sorted(seqs[:40])), tab("b", sorted(seqs[40:])))

    pending, answer_seq = db.execute(
        "SELECT "
        f"{ANSWERS} AS pending_answers, "
        f"{SEQS} AS answer_seq"
        " FROM test_session WHERE candidate_id = 'alice'"
    ).fetchone() or (None, None)
    assert {f"a{i}" for i in range(40)} | {f"b{i}" for i in range(40)} <= set(pending)
    for key in pending:
        if key != "shared":
            assert pending[key].startswith(f"{key[0]} edit {key[1:]} ")
    assert pending["shared"] == sent[max(sent)][1]
    assert answer_seq["shared"] == max(sent)
    # Every save heard the truth: `shared` applied if its seq was the newest yet, else superseded.
    superseded = [r for r in responses if "shared" in r["superseded"]]
    assert all("shared" in r["applied"] or "shared" in r["superseded"] for r in responses)
    assert not [r for r in superseded if r["seq"] == max(sent)]
    report("two_tabs", saves=len(responses), shared_superseded=len(superseded))


async def test_a_burst_on_one_question_keeps_the_highest_seq(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    """Twenty saves of one question in flight at once, in shuffled order."""
    token = (await api.start("alice"))["token"]
    seqs = random.Random(5).sample(range(1, 1000), 20)

    async def save(seq: int) -> dict[str, Any]:
        response = await api.as_candidate(
            "PATCH", "alice", "answers", token, json={"answers": {"q": f"v{seq}"}, "seq": seq}
        )
        assert response.status_code == 200
        data: dict[str, Any] = response.json()
        return data

    await asyncio.gather(*(save(seq) for seq in seqs))
    pending, answer_seq = db.execute(
        "SELECT "
        f"{ANSWERS} AS pending_answers, "
        f"{SEQS} AS answer_seq"
        " FROM test_session WHERE candidate_id = 'alice'"
    ).fetchone() or (None, None)
    assert pending == {"q": f"v{max(seqs)}"} and answer_seq == {"q": max(seqs)}
