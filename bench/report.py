"""Analytics at scale (issue 6, benchmark 3): `invigilator report`, end to end, over 100k and
1M sessions with their events.

    .venv/bin/python -m bench.report                     # 100k then 1M, about 4 minutes
    .venv/bin/python -m bench.report --sizes 100000      # one size

The smallest size is made by `invigilator demo-data --candidates N` (realistic distributions,
about ten events per session, spread over the last 30 days) when that command exists, else by
set-based SQL. Each larger size is reached by copying those sessions and their events with
set-based SQL (new candidate ids, ended sessions shifted back by k minutes so they stay in the
default 30-day window), then VACUUM ANALYZE, as autovacuum would leave a real table. Every
session has the page claims the browser client makes (`claim_pages`: one per session, two for
one in ten, from two devices for one in forty), copied with it.

Timed per size (medians of --repeat runs, after one untimed warm-up run):
- `invigilator report` (the table, which also reads the live view) as a subprocess, wall clock:
  what a user waits for;
- `invigilator report --format json`;
- `analytics.summary` in process: the query alone, over the report's rollup as the sweeper
  keeps it (migration 0014: every quarter hour of ended sessions rolled up, timed as setup),
  and once before it is made (`summary_query_unrolled_ms`: right after the upgrade, or on
  Citus, which keeps no rollup);
- `invigilator --help`: the interpreter and import cost every command pays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import common
from bench.sweeper import bulk_load
from invigilator.db import connector, migrate


def has_command(name: str) -> bool:
    proc = subprocess.run(
        [str(common.VENV_BIN / "invigilator"), name, "--help"], capture_output=True, timeout=60
    )
    return proc.returncode == 0


def invigilator(url: str, *args: str, timeout: float = 900) -> tuple[float, str]:
    """Run `invigilator ARGS --database-url URL`; (wall seconds, stdout)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["COLUMNS"] = "120"
    t = time.perf_counter()
    proc = subprocess.run(
        [str(common.VENV_BIN / "invigilator"), *args, "--database-url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"invigilator {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def sql_fill(conn: psycopg.Connection[Any], total: int) -> None:
    """Without demo-data: sessions over the last 28 days and a few events each (SQL only)."""
    from bench.sweeper import fill

    fill(conn, total, span_days=28)
    with bulk_load(conn):
        conn.execute(
            """INSERT INTO test_session_event (candidate_id, type, at, actor, detail)
               SELECT candidate_id, 'started', test_start_time, 'staff', '{}'::jsonb
                 FROM test_session
               UNION ALL
               SELECT candidate_id, 'focus_lost', test_start_time + interval '5 min',
                      'candidate', '{}'::jsonb
                 FROM test_session WHERE hashtext(candidate_id::text) % 5 = 0
               UNION ALL
               SELECT candidate_id, status, completed_at, 'system',
                      jsonb_build_object('method', completion_method)
                 FROM test_session WHERE status <> 'active'"""
        )
    conn.execute("VACUUM ANALYZE")


def claim_pages(conn: psycopg.Connection[Any]) -> None:
    """The page claims a deployment has: the browser client claims each page it opens, so one
    per session, a second (a reload on a new tab) for one in ten, from another device for one
    in forty. The report's spread pass reads them."""
    conn.execute(
        """INSERT INTO test_session_page (candidate_id, page_id, user_agent, client_address,
                                          first_seen, last_seen)
           SELECT t.candidate_id, 'p' || k,
                  CASE WHEN k = 2 AND h % 40 = 0 THEN 'Phone' ELSE 'Laptop ' || h % 3 END,
                  '10.0.' || h % 250 || '.' || h % 200, t.test_start_time, t.test_start_time
             FROM test_session t,
                  LATERAL (SELECT abs(hashtext(t.candidate_id::text)) AS h) x,
                  generate_series(1, CASE WHEN x.h % 10 = 0 THEN 2 ELSE 1 END) k
               ON CONFLICT DO NOTHING"""
    )


def columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str, bool]]:
    """(name, type, generated/identity) of a table's columns, in order."""
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                  a.attidentity <> '' OR a.attgenerated <> ''
             FROM pg_attribute a
            WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        (table,),
    ).fetchall()
    return [(r[0], r[1], bool(r[2])) for r in rows]


def grow(conn: psycopg.Connection[Any], factor: int) -> None:
    """Copy every session (and its candidate and events) `factor - 1` times, set-based: copy k
    gets ids md5(id || ':' || k) and, when ended, every time shifted back k minutes."""
    new_id = "md5(t.candidate_id::text || ':' || k)::uuid::text"
    shift = "CASE WHEN t.status = 'active' THEN interval '0' ELSE k * interval '1 minute' END"

    def select_list(table: str, alias: str) -> tuple[str, str]:
        names, exprs = [], []
        for name, typ, generated in columns(conn, table):
            if generated:
                continue
            names.append(name)
            if name == "candidate_id":
                exprs.append(new_id)
            elif typ == "timestamp with time zone":
                exprs.append(f"{alias}.{name} - ({shift})")
            else:
                exprs.append(f"{alias}.{name}")
        return ", ".join(names), ", ".join(exprs)

    with bulk_load(conn):
        conn.execute(
            f"""INSERT INTO candidate (candidate_id)
                SELECT {new_id} FROM test_session t, generate_series(1, %s) k""",
            (factor - 1,),
        )
        names, exprs = select_list("test_session", "t")
        conn.execute(
            f"""INSERT INTO test_session ({names})
                SELECT {exprs} FROM test_session t, generate_series(1, %s) k""",
            (factor - 1,),
        )
        for table in ("test_session_event", "test_session_page"):  # a session's rows, copied
            names, exprs = select_list(table, "c")
            conn.execute(
                f"""INSERT INTO {table} ({names})
                    SELECT {exprs}
                      FROM {table} c
                      JOIN test_session t ON t.candidate_id = c.candidate_id,
                           generate_series(1, %s) k""",
                (factor - 1,),
            )
    conn.execute("VACUUM ANALYZE")


async def summary_ms(url: str, repeat: int) -> float:
    from invigilator import analytics
    from invigilator.config import Settings

    settings = Settings()
    pool = connector.pool_for(url, min_size=1, max_size=1)
    await pool.open(wait=True)
    try:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            await analytics.summary(pool, None, None, settings.policy())
            times.append((time.perf_counter() - t) * 1000)
    finally:
        await pool.close()
    return round(common.median(times), 1)


def timed_command(url: str, repeat: int, *args: str) -> dict[str, Any]:
    """Median wall seconds of `invigilator ARGS` (after one untimed warm-up run); a failure is
    recorded with its message instead of stopping the benchmark."""
    try:
        invigilator(url, *args)
        runs = [invigilator(url, *args) for _ in range(repeat)]
    except RuntimeError as exc:
        return {"seconds": None, "error": str(exc)[-600:]}
    seconds = [r[0] for r in runs]
    return {
        "seconds": round(common.median(seconds), 3),
        "all": [round(x, 3) for x in seconds],
        "stdout": runs[-1][1],
    }


async def roll_up_all(url: str) -> dict[str, Any]:
    """What the sweeper's passes leave: every quarter hour of ended sessions rolled up
    (analytics.roll_up, as `Sessions.roll_up` calls it), timed."""
    from invigilator import analytics
    from invigilator.config import Settings

    policy = Settings().policy()
    pool = connector.pool_for(url, min_size=1, max_size=1)
    await pool.open(wait=True)
    buckets = ready = 0
    t = time.perf_counter()
    try:
        while True:
            done = await analytics.roll_up(pool, policy, limit=500)
            buckets, ready = buckets + done.buckets, ready + done.ready
            if done.buckets < 500:
                break
    finally:
        await pool.close()
    return {"buckets": buckets, "ready": ready, "seconds": round(time.perf_counter() - t, 1)}


def measure(url: str, repeat: int) -> dict[str, Any]:
    # The summary with nothing rolled up (just after the upgrade to 0014, or on Citus), once;
    # then the rollup the sweeper keeps, and everything else measured over it.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM test_session_rollup")
    try:
        unrolled_ms: float | None = asyncio.run(summary_ms(url, 1))
    except Exception:
        unrolled_ms = None
    rollup = asyncio.run(roll_up_all(url))
    as_json = timed_command(url, repeat, "report", "--format", "json")
    table = timed_command(url, repeat, "report")
    help_s = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(
            [str(common.VENV_BIN / "invigilator"), "--help"], capture_output=True, timeout=60
        )
        help_s.append(time.perf_counter() - t)
    parsed = json.loads(as_json["stdout"]) if as_json.get("stdout") else {}
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM test_session), (SELECT count(*) FROM test_session_event),"
            " pg_database_size(current_database())"
        ).fetchone()
    assert row is not None
    try:
        query_ms: float | None = asyncio.run(summary_ms(url, repeat))
    except Exception as exc:  # recorded, like a failing command
        query_ms = None
        table.setdefault("error", f"analytics.summary: {exc}")
    return {
        "sessions": row[0],
        "events": row[1],
        "database_bytes": row[2],
        "sessions_in_report": parsed.get("total"),
        "report_table_s": table["seconds"],
        "report_table_s_all": table.get("all"),
        "report_table_error": table.get("error"),
        "report_json_s": as_json["seconds"],
        "report_json_s_all": as_json.get("all"),
        "report_json_error": as_json.get("error"),
        "summary_query_ms": query_ms,
        "summary_query_unrolled_ms": unrolled_ms,
        "rollup": rollup,
        "cli_startup_s": round(common.median(help_s), 3),
        "loadavg": common.loadavg(),
    }


def run(sizes: list[int], repeat: int, data: str, out: Path | None = None) -> dict[str, Any]:
    started = time.monotonic()
    sizes = sorted(sizes)
    base = sizes[0]
    if any(s % base for s in sizes):
        raise SystemExit("every size must be a multiple of the smallest")
    use_demo = data == "demo" or (data == "auto" and has_command("demo-data"))
    results = []
    with common.postgres() as pg:
        with pg.connect() as conn:
            machine = common.machine_info(conn)
        url = pg.create_database("invigilator_bench_report")
        migrate.upgrade(url, create_candidate_table=True)
        t = time.monotonic()
        if use_demo:
            invigilator(url, "demo-data", "--candidates", str(base))
        with psycopg.connect(url, autocommit=True) as conn:
            if not use_demo:
                sql_fill(conn, base)
            claim_pages(conn)
            conn.execute("VACUUM ANALYZE")
        current = base
        setup_s = time.monotonic() - t
        for size in sizes:
            t = time.monotonic()
            if size > current:
                with psycopg.connect(url, autocommit=True) as conn:
                    grow(conn, size // current)
                current = size
            setup_s += time.monotonic() - t
            print(f"  {size:,} sessions ready ({setup_s:.0f}s)", file=sys.stderr, flush=True)
            result = measure(url, repeat)
            result["setup_s"] = round(setup_s, 1)
            results.append(result)
            setup_s = 0.0
        machine["loadavg_at_end"] = common.loadavg()
    largest = results[-1]
    ratios = {}
    if len(results) > 1:
        for key in ("report_table_s", "report_json_s", "summary_query_ms"):
            r = common.ratio(largest[key], results[0][key])
            ratios[key] = round(r, 2) if r is not None else None
    doc = {
        "benchmark": "report",
        "machine": machine,
        "data": "invigilator demo-data + SQL copies" if use_demo else "SQL",
        "repeat": repeat,
        "results": results,
        "ratio_largest_to_smallest": ratios,
        "goals": {
            "report_1m_under_3s": {
                "goal": "`invigilator report` over 1M sessions in under 3 s",
                "measured": {
                    "sessions": largest["sessions"],
                    "report_table_s": largest["report_table_s"],
                    "report_json_s": largest["report_json_s"],
                },
                "met": largest["sessions"] >= 1_000_000
                and largest["report_table_s"] is not None
                and largest["report_table_s"] < 3,
            }
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    doc["written_to"] = str(common.write_results("report", doc, out))
    return doc


def render(doc: dict[str, Any]) -> str:
    rows = [
        [
            f"{r['sessions']:,}",
            f"{r['events']:,}",
            f"{r['database_bytes'] / 2**20:,.0f} MiB",
            r["report_table_s"],
            r["report_json_s"],
            r["summary_query_ms"],
            r.get("summary_query_unrolled_ms"),
            (r.get("rollup") or {}).get("seconds"),
            r["cli_startup_s"],
            r["setup_s"],
        ]
        for r in doc["results"]
    ]
    parts = [
        common.markdown_table(
            [
                "sessions",
                "events",
                "database",
                "`report` (s)",
                "`report --format json` (s)",
                "summary query (ms)",
                "summary, nothing rolled up (ms)",
                "rolling up (s)",
                "`invigilator --help` (s)",
                "setup (s)",
            ],
            rows,
        )
    ]
    if doc["ratio_largest_to_smallest"]:
        parts.append(
            common.markdown_table(
                ["ratio largest / smallest", "value"],
                [[k, v] for k, v in doc["ratio_largest_to_smallest"].items()],
            )
        )
    for r in doc["results"]:
        for key in ("report_table_error", "report_json_error"):
            if r.get(key):
                parts.append(f"{key} at {r['sessions']:,} sessions: {r[key]}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="`invigilator report` at 100k and 1M sessions.")
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated session counts")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--data", choices=("auto", "demo", "sql"), default="auto")
    p.add_argument("--out", help="JSON path (default bench/results/report.json)")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    doc = run(sizes, max(1, a.repeat), a.data, Path(a.out) if a.out else None)
    m = doc["machine"]
    print(
        f"\nreport benchmark — {m['nproc']} × {m['cpu_model']}, PostgreSQL {m.get('postgresql')}, "
        f"data: {doc['data']}, load avg {m['loadavg_at_start']} → {m['loadavg_at_end']}\n"
    )
    print(render(doc))
    print(f"\nresults: {doc['written_to']} ({doc['elapsed_s']} s)")


if __name__ == "__main__":
    main()
