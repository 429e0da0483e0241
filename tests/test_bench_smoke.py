"""Keeps the benchmark harnesses from rotting. bench/heartbeat.py: its whole setup and a tiny
load, closed loop (wrk when installed, else the asyncio client) and open loop (the asyncio
client). bench/answers.py: its three parts at tiny sizes. No assertion on speed, only that they
produce results with zero errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import answers, common, heartbeat  # noqa: E402

from invigilator.db import migrate  # noqa: E402


def test_heartbeat_harness_runs_a_tiny_load(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_DATABASE_URL", server_url)  # the test server; own databases
    out = tmp_path / "heartbeat.json"
    cfg = heartbeat.Config(
        candidates=50,
        workers=1,
        duration=0.6,
        warmup=0.3,
        connections=4,
        interval=0.5,  # 50 candidates every 0.5 s: 100 requests/s open loop
        rate_duration=0.6,
        scenarios=["invigilator", "rate_invigilator"],
        out=out,
        quiet=True,
        # 50 candidates in a closed loop beat ~20 times a second each, far beyond any real
        # candidate: the per-candidate limit would answer 429 (it has its own tests).
        server_env={"INVIGILATOR_RATE_LIMIT_CANDIDATE_PER_MINUTE": "0"},
    )

    data = heartbeat.run(cfg)

    assert json.loads(out.read_text())["benchmark"] == "heartbeat"
    for name in cfg.scenarios:
        result = data["results"][name]
        assert result["requests"] > 0, name
        assert result["errors"] == 0, (name, result.get("server_log_tail"))
        assert result["warmup_errors"] == 0, name
        assert result["server_cpu_s_per_1k"] is not None


def test_answers_bench_runs_its_three_parts_at_tiny_sizes(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/answers.py: the per-save costs (today's rows, the old JSONB statement, the
    one-row floor), the API rounds, and the mixed coding-test scenario for both storages (the
    server saving through the old statement too), each with a few candidates for a second."""
    monkeypatch.setenv("BENCH_DATABASE_URL", server_url)
    with common.postgres() as pg:
        url = pg.create_database("bench_answers_smoke")
        migrate.upgrade(url, create_candidate_table=True)
        (cost,) = answers.measure_sql(url, saves=3, rounds=1, sizes=(3,))
        assert cost["questions"] == 1
        for storage in ("rows", "jsonb", "floor"):
            assert cost[storage]["wal_bytes_per_save"] > 0, storage
        api = answers.measure_api(pg, url, 0.3, 1, tmp_path, sizes=(3,))
        assert api[0]["saves"] > 0 and api[0]["errors"] == 0
        cfg = answers.MixedConfig(
            ladders={"rows": [4], "jsonb": [4]},
            warmup=0.5,
            seconds=1.5,
            workers=1,
            templates=2,
            min_kb=2,
            max_kb=8,
        )
        mixed = answers.measure_mixed(pg, cfg, tmp_path)
    for storage in ("rows", "jsonb"):
        (step,) = mixed[storage]["steps"]
        assert step["requests"] > 0, storage
        assert step["errors"] == 0 and step["warmup_errors"] == 0, (storage, step["statuses"])
    assert "rows" in answers.render_mixed(mixed)


def test_memory_bench_measures_the_per_candidate_state() -> None:
    from bench import memory

    result = memory.measure(200)
    assert result["verified_token_bytes_per_candidate"] > 0
    assert result["rate_limit_bucket_bytes_per_candidate"] > 0
