"""Keeps the heartbeat benchmark harness (bench/heartbeat.py) from rotting: its whole setup and a
tiny load, closed loop (wrk when installed, else the asyncio client) and open loop (the asyncio
client). No assertion on speed, only that it produces a result with zero errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import heartbeat  # noqa: E402


def test_heartbeat_harness_runs_a_tiny_load(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_DATABASE_URL", server_url)  # the test server; own databases
    out = tmp_path / "heartbeat.json"
    cfg = heartbeat.Config(
        candidates=50,
        workers=1,
        duration=1.5,
        warmup=0.5,
        connections=4,
        interval=0.5,  # 50 candidates every 0.5 s: 100 requests/s open loop
        rate_duration=1.5,
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
