"""Sweeper scaling (issue 6, benchmark 2): a sweep pass that ends 1,000 due sessions, an idle
pass, and the guide's "find active" / "find abandoned" queries, in tables of 100k and 1M
sessions where most sessions ended long ago, with their EXPLAIN plans at both sizes.

    .venv/bin/python -m bench.sweeper                    # 100k and 1M, under a minute
    .venv/bin/python -m bench.sweeper --sizes 100000     # one size

The table is filled with set-based SQL (generate_series) and ANALYZEd: per size, all but 3,000
sessions ended over the past year (80 % submitted, 10 % timed out, 6 % abandoned, 4 % tab
closed), 2,000 are running, and 1,000 are due: 500 past their deadline, 500 silent for ten
minutes. A pass is `invigilator.sweeper.sweep_once` (batches of the default size) when that
module exists, else `SessionStore.finalize_due` until a batch comes back short. Between
repetitions the 1,000 are made due again and the table vacuumed, so every pass meets the same
state. Times are medians; the ratio 1M / 100k is the scaling figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import common
from bench.common import CANDIDATE_ID_SQL
from invigilator.config import Settings
from invigilator.db import connector, migrate
from invigilator.store import Q, SessionStore

RUNNING = 2_000
DUE = 1_000
#: Due sessions are recognisable by these durations (no other row uses them), so that they
#: can be made due again between repetitions.
DUE_DEADLINE_MINUTES = 61
DUE_SILENT_MINUTES = 121


@contextlib.contextmanager
def bulk_load(conn: psycopg.Connection[Any]) -> Any:
    """Skip triggers (deadline, webhooks, foreign keys) while loading rows we made consistent
    ourselves; fall back to the normal path when the role may not (not a superuser)."""
    try:
        conn.execute("SET session_replication_role = replica")
        replica = True
    except psycopg.errors.InsufficientPrivilege:
        replica = False
    try:
        yield
    finally:
        if replica:
            conn.execute("SET session_replication_role = DEFAULT")


def fill(conn: psycopg.Connection[Any], total: int, span_days: int = 365) -> None:
    """`total` sessions: ended ones over `span_days`, RUNNING running ones and DUE due ones."""
    ended = total - RUNNING - DUE
    cid = CANDIDATE_ID_SQL.format(n="g")
    with bulk_load(conn):
        conn.execute(
            f"INSERT INTO candidate (candidate_id) SELECT {cid} FROM generate_series(1, %s) g",
            (total,),
        )
        # Ended sessions, oldest first (ids and start times grow together, as in real life).
        conn.execute(
            f"""
            INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes,
                deadline, last_heartbeat, last_activity, status, completion_method,
                completed_at, sections_completed, created_at, updated_at)
            SELECT {cid}, st, dur, st + make_interval(mins => dur), ended_at - hb_gap,
                   ended_at - hb_gap, CASE WHEN method = 'heartbeat_timeout' THEN 'abandoned'
                                           ELSE 'completed' END,
                   method, ended_at, '["s1","s2"]', st, ended_at
              FROM generate_series(1, %(ended)s::int) g
             CROSS JOIN LATERAL (SELECT
                   now() - interval '2 hours'
                       - ((%(ended)s - g)::float8 / %(ended)s) * %(span)s * interval '1 day' AS st,
                   (ARRAY[30, 45, 60, 90, 120])[1 + g %% 5] AS dur,
                   (g::bigint * 7919) %% 100 AS r) a
             CROSS JOIN LATERAL (SELECT CASE WHEN r < 80 THEN 'manual'
                                             WHEN r < 90 THEN 'timer_expired'
                                             WHEN r < 96 THEN 'heartbeat_timeout'
                                             ELSE 'tab_close' END AS method) m
             CROSS JOIN LATERAL (SELECT
                   CASE method WHEN 'manual' THEN st + make_interval(mins => dur) * 0.8
                               WHEN 'timer_expired' THEN st + make_interval(mins => dur)
                               WHEN 'heartbeat_timeout'
                                   THEN st + make_interval(mins => dur) * 0.3 + interval '5 min'
                               ELSE st + make_interval(mins => dur) * 0.5 END AS ended_at,
                   CASE WHEN method = 'heartbeat_timeout' THEN interval '5 min'
                        ELSE interval '5 s' END AS hb_gap) e
            """,
            {"ended": ended, "span": span_days},
        )
        # Running sessions: started in the last half hour, heard from in the last 10 s.
        conn.execute(
            f"""
            INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes,
                deadline, last_heartbeat, last_activity, status)
            SELECT {cid}, st, 90, st + interval '90 min', now() - (g %% 10) * interval '1 s',
                   now() - (g %% 10) * interval '1 s', 'active'
              FROM generate_series(%(first)s::int, %(last)s::int) g
             CROSS JOIN LATERAL (SELECT now() - ((g %% 30) + 1) * interval '1 min' AS st) a
            """,
            {"first": ended + 1, "last": ended + RUNNING},
        )
        # Due: half past their deadline (heard from until the end), half silent for 10 minutes.
        conn.execute(
            f"""
            INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes,
                deadline, last_heartbeat, last_activity, status)
            SELECT {cid}, st, dur, st + make_interval(mins => dur), hb, hb, 'active'
              FROM generate_series(%(first)s::int, %(last)s::int) g
             CROSS JOIN LATERAL (SELECT g %% 2 = 0 AS past_deadline) k
             CROSS JOIN LATERAL (SELECT
                   CASE WHEN past_deadline THEN now() - interval '2 hours'
                        ELSE now() - interval '20 min' END AS st,
                   CASE WHEN past_deadline THEN %(d1)s ELSE %(d2)s END AS dur) a
             CROSS JOIN LATERAL (SELECT
                   CASE WHEN past_deadline THEN st + interval '60.5 min'
                        ELSE now() - interval '10 min' END AS hb) h
            """,
            {
                "first": ended + RUNNING + 1,
                "last": total,
                "d1": DUE_DEADLINE_MINUTES,
                "d2": DUE_SILENT_MINUTES,
            },
        )
    conn.execute("VACUUM ANALYZE candidate, test_session, test_session_event")


def make_due_again(conn: psycopg.Connection[Any]) -> None:
    """The 1,000 due sessions active and due again; the running ones just heard from."""
    conn.execute(
        "UPDATE test_session SET last_heartbeat = now() WHERE status = 'active' "
        "AND test_duration_minutes = 90"
    )
    conn.execute(
        """UPDATE test_session
              SET status = 'active', completion_method = NULL, completed_at = NULL
            WHERE test_duration_minutes IN (%s, %s) AND status <> 'active'""",
        (DUE_DEADLINE_MINUTES, DUE_SILENT_MINUTES),
    )
    conn.execute("VACUUM ANALYZE test_session")


def plan(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of a named query; writes are rolled back."""
    conn.execute("BEGIN")
    try:
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {Q[name]}", params).fetchall()
    finally:
        conn.execute("ROLLBACK")
    return "\n".join(r[0] for r in rows)


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    """Median milliseconds of `repeat` calls, and the last call's result."""
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(common.median(times), 2), result


async def measure_size(url: str, total: int, repeat: int) -> dict[str, Any]:
    settings = Settings()
    policy = settings.policy()
    params = policy.sql_params()
    batch = settings.sweep_batch_size
    try:
        from invigilator.sweeper import sweep_once
    except ImportError:  # before the sweeper module existed: the store's batch, looped
        sweep_once = None
    pool = connector.pool_for(url, min_size=1, max_size=2)
    await pool.open(wait=True)
    store = SessionStore(pool, policy)

    async def one_pass() -> int:
        if sweep_once is not None:
            try:  # since the service layer, the sweeper drives it
                from invigilator.service import Sessions

                return len(await sweep_once(Sessions(store, settings.limits()), batch_size=batch))
            except ImportError:
                return len(await sweep_once(store, batch_size=batch))
        ended = 0
        while True:
            got = await store.finalize_due(batch)
            ended += len(got)
            if len(got) < batch:
                return ended

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            pass_times, ended_counts = [], []
            for _ in range(repeat):
                make_due_again(conn)
                t = time.perf_counter()
                ended_counts.append(await one_pass())
                pass_times.append((time.perf_counter() - t) * 1000)
            idle_ms, _ = await timed(one_pass, repeat)
            active_ms, active = await timed(lambda: store.find_active(limit=1000), repeat * 2)
            make_due_again(conn)
            abandoned_ms, abandoned = await timed(
                lambda: store.find_abandoned(limit=1000), repeat * 2
            )
            plans = {
                "find_active": plan(conn, "find_active", {"limit": 1000}),
                "find_abandoned": plan(
                    conn, "find_abandoned", {"silent_for": policy.abandon_after, "limit": 1000}
                ),
                "find_due": plan(conn, "find_due", {**params, "limit": batch}),
            }
            size = conn.execute(
                "SELECT pg_total_relation_size('test_session'), "
                "pg_relation_size('idx_test_session_active')"
            ).fetchone()
            assert size is not None
    finally:
        await pool.close()
    return {
        "sessions": total,
        "due": DUE,
        "running": RUNNING,
        "batch_size": batch,
        "sweep_implementation": "sweeper.sweep_once" if sweep_once else "store.finalize_due",
        "pass_ms": round(common.median(pass_times), 2),
        "pass_ms_all": [round(x, 2) for x in pass_times],
        "ended_per_pass": ended_counts,
        "idle_pass_ms": idle_ms,
        "find_active_ms": active_ms,
        "find_active_rows": len(active),
        "find_abandoned_ms": abandoned_ms,
        "find_abandoned_rows": len(abandoned),
        "table_bytes": size[0],
        "active_index_bytes": size[1],
        "index_used": {name: "idx_test_session_active" in text for name, text in plans.items()},
        "plans": plans,
    }


def run(sizes: list[int], repeat: int, out: Any = None, quiet: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    results = []
    with common.postgres() as pg:
        with pg.connect() as conn:
            machine = common.machine_info(conn)
        for total in sizes:
            url = pg.create_database(f"invigilator_bench_sweep_{total}")
            migrate.upgrade(url, create_candidate_table=True)
            t = time.monotonic()
            with psycopg.connect(url, autocommit=True) as conn:
                fill(conn, total)
            setup_s = round(time.monotonic() - t, 1)
            if not quiet:
                print(f"  {total:,} sessions filled in {setup_s}s", file=sys.stderr, flush=True)
            result = asyncio.run(measure_size(url, total, repeat))
            result["setup_s"] = setup_s
            result["loadavg"] = common.loadavg()
            results.append(result)
            pg.drop_databases()
        machine["loadavg_at_end"] = common.loadavg()
    ratios = {}
    if len(results) >= 2:
        small, large = results[0], results[-1]
        for key in ("pass_ms", "idle_pass_ms", "find_active_ms", "find_abandoned_ms"):
            r = common.ratio(large[key], small[key])
            ratios[key] = round(r, 2) if r is not None else None
    data = {
        "benchmark": "sweeper",
        "machine": machine,
        "repeat": repeat,
        "results": results,
        "ratio_largest_to_smallest": ratios,
        "goals": {
            "sweep_pass_scales": {
                "goal": "a pass with 1,000 due costs within 1.5× at 1M sessions as at 100k",
                "measured": ratios.get("pass_ms"),
                "met": None if not ratios else ratios["pass_ms"] <= 1.5,
            },
            "find_active_uses_index": {
                "goal": "find active uses an index",
                "measured": [r["index_used"]["find_active"] for r in results],
                "met": all(r["index_used"]["find_active"] for r in results),
            },
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    data["written_to"] = str(common.write_results("sweeper", data, out))
    return data


def render(data: dict[str, Any]) -> str:
    rows = [
        [
            f"{r['sessions']:,}",
            r["pass_ms"],
            r["idle_pass_ms"],
            r["find_active_ms"],
            r["find_abandoned_ms"],
            " / ".join(f"{k}: {'index' if v else 'NO index'}" for k, v in r["index_used"].items()),
            f"{r['table_bytes'] / 2**20:,.0f} MiB",
            f"{r['active_index_bytes'] / 2**10:,.0f} KiB",
        ]
        for r in data["results"]
    ]
    table = common.markdown_table(
        [
            "sessions",
            "pass, 1,000 due (ms)",
            "idle pass (ms)",
            "find active (ms)",
            "find abandoned (ms)",
            "idx_test_session_active used",
            "table + indexes",
            "active index",
        ],
        rows,
    )
    parts = [table]
    if data["ratio_largest_to_smallest"]:
        parts.append(
            common.markdown_table(
                ["ratio largest / smallest", "value"],
                [[k, v] for k, v in data["ratio_largest_to_smallest"].items()],
            )
        )
    for r in data["results"]:
        for name, text in r["plans"].items():
            parts.append(f"{name} at {r['sessions']:,} sessions:\n\n```\n{text}\n```")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Sweeper scaling at 100k and 1M sessions (issue 6).")
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated session counts")
    p.add_argument("--repeat", type=int, default=5, help="passes per size (median)")
    p.add_argument("--out", help="JSON path (default bench/results/sweeper.json)")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    if any(s < RUNNING + DUE + 1 for s in sizes):
        raise SystemExit(f"each size must exceed {RUNNING + DUE}")
    data = run(sizes, max(1, a.repeat), Path(a.out) if a.out else None)
    m = data["machine"]
    print(
        f"\nsweeper benchmark — {m['nproc']} × {m['cpu_model']}, PostgreSQL {m.get('postgresql')}, "
        f"load avg {m['loadavg_at_start']} → {m['loadavg_at_end']}\n"
    )
    print(render(data))
    print(f"\nresults: {data['written_to']} ({data['elapsed_s']} s)")


if __name__ == "__main__":
    main()
