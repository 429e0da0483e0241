"""`invigilator report` and `invigilator demo-data` as a user runs them: a real process
(`python -m invigilator`) against a real database given by --database-url."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import psycopg

from invigilator import analytics
from invigilator.db import connector
from support.cli import run_cli
from support.db import TEST_POLICY
from test_analytics import EXPECTED, SINCE, UNTIL, build_dataset, without_clock

WINDOW = ["--since", "2024-03-04", "--until", "2024-03-11"]


def summary_of(db_url: str, **kwargs: Any) -> analytics.Summary:
    async def run() -> analytics.Summary:
        pool = connector.pool_for(db_url, min_size=1, max_size=1)
        await pool.open(wait=True)
        try:
            return await analytics.summary(pool, policy=TEST_POLICY, **kwargs)
        finally:
            await pool.close()

    return asyncio.run(run())


def test_report_json_is_the_summary(db_url: str, db: psycopg.Connection[Any]) -> None:
    build_dataset(db)
    result = run_cli("report", *WINDOW, "--format", "json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert without_clock(printed) == without_clock(summary_of(db_url, since=SINCE, until=UNTIL))
    assert without_clock(printed) == EXPECTED
    assert printed["window"]["since"] == "2024-03-04T00:00:00+00:00"
    assert "database:" in result.stderr  # which database, on stderr, out of the JSON's way


def test_report_csv_is_flat_and_parses(db_url: str, db: psycopg.Connection[Any]) -> None:
    build_dataset(db)
    result = run_cli("report", *WINDOW, "--format", "csv", db_url=db_url)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["metric", "dimension", "value"]
    values = {(m, d): v for m, d, v in rows[1:]}
    assert len(values) == len(rows) - 1
    assert values[("total", "")] == "11"
    assert values[("completion_rate", "")] == "0.6364"
    assert values[("by_method.count", "heartbeat_timeout")] == "3"
    assert values[("duration_seconds.p90", "")] == "3780.0"
    assert values[("abandonment.by_hour", "20")] == "1"
    assert values[("daily.started", "2024-03-09")] == "2"
    expected = summary_of(db_url, since=SINCE, until=UNTIL)
    assert len(rows) - 1 == len(list(analytics.summary_rows(expected)))

    empty = run_cli("report", "--since", "2020-01-01", "--until", "2020-01-02",
                        "--format", "csv", db_url=db_url)  # fmt: skip
    values = {(m, d): v for m, d, v in csv.reader(io.StringIO(empty.stdout))}
    assert values[("total", "")] == "0" and values[("completion_rate", "")] == ""  # null: empty


def test_report_table_is_readable(db_url: str, db: psycopg.Connection[Any]) -> None:
    build_dataset(db)
    result = run_cli("report", *WINDOW, db_url=db_url)
    assert result.returncode == 0, result.stderr
    for text in ("Overview", "63.6 %", "How sessions ended", "heartbeat_timeout",
                 "Funnel", "Daily", "2024-03-09", "39m34s"):  # fmt: skip
        assert text in result.stdout, text


def test_report_charts_are_written_as_png_and_svg(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    build_dataset(db)
    charts = tmp_path / "charts"
    result = run_cli("report", *WINDOW, "--format", "json", "--charts", str(charts),
                         db_url=db_url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # the charts do not disturb the JSON
    names = ["completion_by_method", "duration_histogram", "abandonment_by_minute",
             "abandonment_by_sections", "abandonment_by_hour", "daily_trend"]  # fmt: skip
    assert sorted(p.name for p in charts.iterdir()) == sorted(
        f"{n}.{ext}" for n in names for ext in ("png", "svg")
    )
    for name in names:
        png = (charts / f"{name}.png").read_bytes()
        svg = (charts / f"{name}.svg").read_text()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
        assert "<svg" in svg and len(svg) > 5000, name


def test_report_refuses_a_reversed_or_unreadable_window(db_url: str) -> None:
    reversed_ = run_cli("report", "--since", "2024-03-11", "--until", "2024-03-04",
                            db_url=db_url)  # fmt: skip
    assert reversed_.returncode == 1 and "since must not be after" in reversed_.stderr
    garbage = run_cli("report", "--since", "yesterday", db_url=db_url)
    assert garbage.returncode == 1 and "not a date" in garbage.stderr


def test_demo_data_then_report_shows_plausible_numbers(db_url: str) -> None:
    loaded = run_cli("demo-data", "--candidates", "500", "--seed", "7", db_url=db_url)
    assert loaded.returncode == 0, loaded.stderr
    assert "500 candidates" in loaded.stdout

    result = run_cli("report", "--format", "json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["total"] == 500
    assert s["active"] == 10  # 2 % are running right now
    assert s["completed"] + s["abandoned"] == 490
    assert 0.75 < s["completion_rate"] < 0.97
    assert sum(m["count"] for m in s["by_method"].values()) == 490
    rare = ("admin_terminated", "timer_abandoned")  # the demo data makes no policy `abandon`
    assert all(m["count"] > 0 for n, m in s["by_method"].items() if n not in rare)
    assert 15 * 60 < s["duration_seconds"]["median"] < 75 * 60
    assert 0.5 < s["duration_share"]["median"] < 1.0
    ab = s["abandonment"]
    assert 20 < ab["total"] < 120
    assert ab["by_sections_completed"][0]["reached"] == 500
    # focus losses ~ Poisson(1.8) among those who give up: P(at least one) = 83 %
    assert 0.6 < ab["focus_lost_before"]["share"] < 0.95
    assert sum(d["started"] for d in s["daily"]) == 500
    assert sum(h["count"] for h in ab["by_hour"]) == ab["total"]

    # some sessions are live right now, a few of them silent
    async def live() -> analytics.Live:
        pool = connector.pool_for(db_url, min_size=1, max_size=1)
        await pool.open(wait=True)
        try:
            return await analytics.live(pool, TEST_POLICY)
        finally:
            await pool.close()

    now = asyncio.run(live())
    assert now["count"] == 10 and 0 <= now["silent"] <= 10

    again = run_cli("demo-data", "--candidates", "5", "--seed", "7", db_url=db_url)
    assert again.returncode == 1 and "already" in again.stderr
