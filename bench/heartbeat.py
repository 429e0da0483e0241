"""Heartbeat throughput and latency over HTTP on loopback, against baselines measured in the same
run on the same machine (issue 6, benchmark 1).

    .venv/bin/python -m bench.heartbeat                # everything, about 6 minutes
    .venv/bin/python -m bench.heartbeat --quick        # shorter runs, about 3 minutes
    .venv/bin/python -m bench.heartbeat --scenarios invigilator,empty --duration 5

A private embedded PostgreSQL in a temporary directory (or $BENCH_DATABASE_URL, a server where
the benchmark may create databases) is migrated and filled with N candidates and active sessions
by set-based SQL; each candidate gets a real token (invigilator.api.tokens.issue, the server's
secret). Each scenario starts its own server, warms it up, measures, and stops it:

| scenario | server | load |
|---|---|---|
| empty | bench/baseline_app.py `/empty` (FastAPI + uvicorn, same workers) | wrk, same requests |
| straightforward | baseline_app.py: token check + the guide's UPDATE per request (pool) | wrk |
| straightforward_seed_schema | the same on the guide's own DDL (btree on last_heartbeat) | wrk |
| invigilator | `invigilator serve --workers N` | wrk, heartbeats |
| invigilator_as_shipped | the same without bench/launch.py's TCP_NODELAY fix | wrk, heartbeats |
| invigilator_mixed | the same | wrk, heartbeats + a share of answer saves |
| pgbench | none: pgbench runs the guide's UPDATE straight into PostgreSQL | pgbench |
| rate_invigilator | `invigilator serve` | open loop: N candidates every 15 s (asyncio client) |
| rate_straightforward | bench/baseline_app.py | the same open loop |
| rate_invigilator_mixed | `invigilator serve` | the same, plus a share of answer saves |
| rate_invigilator_capacity | `invigilator serve` | open loop, 75 % of `invigilator`'s req/s |

Per scenario: requests/s, p50/p99 latency, errors, server CPU seconds per 1,000 requests (the
server's process tree + every PostgreSQL process, psutil before/after the measured window), WAL
bytes per request (pg_current_wal_lsn), the HOT share of test_session updates
(pg_stat_user_tables, diffed over the server's life), commits and row updates per request, and
the peak RSS of the server processes. Results: a markdown table on stdout and JSON in
bench/results/heartbeat.json.

wrk (closed loop) comes from Debian (`apt-get install -y wrk`); without it the closed-loop
scenarios use the asyncio client in closed-loop mode (bench/loadgen.py).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench import common
from bench.common import CANDIDATE_ID_SQL, Postgres, Server
from invigilator.api import tokens
from invigilator.db import migrate

ALL_SCENARIOS = (
    "empty",
    "straightforward",
    "straightforward_seed_schema",
    "invigilator",
    "invigilator_as_shipped",
    "invigilator_mixed",
    "pgbench",
    "rate_invigilator",
    "rate_straightforward",
    "rate_invigilator_mixed",
    "rate_invigilator_capacity",
)

#: The setup guide's own table (its DDL as written: TIMESTAMP columns, a btree on
#: last_heartbeat, its updated_at trigger), for the straightforward_seed_schema scenario:
#: the same reconstruction the adoption tests use.
SEED_SCHEMA_SQL = (
    "CREATE TABLE candidate (candidate_id varchar(36) PRIMARY KEY,"
    " created_at timestamptz NOT NULL DEFAULT now());\n"
    + (
        Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seed_test_session.sql"
    ).read_text()
)

PGBENCH_SCRIPT = """\\set n random(1, {candidates})
UPDATE test_session SET last_heartbeat = CURRENT_TIMESTAMP, last_activity = CURRENT_TIMESTAMP \
WHERE candidate_id = md5('inv-bench-' || :n)::uuid::text;
"""


@dataclass
class Config:
    candidates: int = 20_000
    workers: int = 2
    duration: float = 10.0  # closed-loop measured seconds
    # Long enough that the workers have seen (and cached the verification of) most tokens: a
    # real candidate's token is verified once per process, then reused for hours.
    warmup: float = 15.0
    connections: int = 32  # closed loop
    interval: float = 15.0  # open loop: each candidate beats every `interval` seconds
    rate_duration: float = 30.0
    answer_share: float = 0.1  # the *_mixed scenarios
    pgbench_clients: int = 8
    loadgen: str = "auto"  # wrk | asyncio | auto
    sweeper: bool = True
    rounds: int = 1
    server_env: dict[str, str] = field(default_factory=dict)
    scenarios: list[str] = field(default_factory=lambda: list(ALL_SCENARIOS))
    out: Path | None = None
    quiet: bool = False

    @property
    def rate(self) -> float:
        return self.candidates / self.interval


@dataclass
class Bench:
    cfg: Config
    pg: Postgres
    url: str
    seed_url: str | None
    tmp: Path
    tokens_file: Path
    secret: str
    admin_key: str
    wrk: str | None

    def say(self, text: str) -> None:
        if not self.cfg.quiet:
            print(text, file=sys.stderr, flush=True)


# --- setup ----------------------------------------------------------------------------------


def fill_sessions(conn: psycopg.Connection[Any], n: int) -> None:
    """N candidates, each with an active session started a minute ago for a day (set-based)."""
    cid = CANDIDATE_ID_SQL.format(n="g")
    conn.execute(
        f"INSERT INTO candidate (candidate_id) SELECT {cid} FROM generate_series(1, %s) g", (n,)
    )
    conn.execute(
        f"""INSERT INTO test_session (candidate_id, test_start_time, test_duration_minutes,
                                      last_heartbeat, last_activity)
            SELECT {cid}, now() - interval '1 minute', 1440, now(), now()
              FROM generate_series(1, %s) g""",
        (n,),
    )


def setup(cfg: Config, pg: Postgres, tmp: Path) -> Bench:
    url = pg.create_database("invigilator_bench")
    migrate.upgrade(url, create_candidate_table=True)
    with psycopg.connect(url, autocommit=True) as conn:
        fill_sessions(conn, cfg.candidates)
        conn.execute(
            f"""INSERT INTO test_session_event (candidate_id, type, actor, detail)
                SELECT {CANDIDATE_ID_SQL.format(n="g")}, 'started', 'bench', '{{}}'
                  FROM generate_series(1, %s) g""",
            (cfg.candidates,),
        )
        conn.execute("VACUUM ANALYZE")
    seed_url = None
    if "straightforward_seed_schema" in cfg.scenarios:
        seed_url = pg.create_database("invigilator_bench_seed")
        with psycopg.connect(seed_url, autocommit=True) as conn:
            conn.execute(SEED_SCHEMA_SQL)
            fill_sessions(conn, cfg.candidates)
            conn.execute("VACUUM ANALYZE")
    secret = secrets.token_urlsafe(32)
    admin_key = secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    expires = now + timedelta(days=2)
    tokens_file = tmp / "tokens.tsv"
    with tokens_file.open("w") as f:
        for n in range(1, cfg.candidates + 1):
            cid = common.candidate_id(n)
            f.write(f"{cid}\t{tokens.issue(cid, expires, secret, now)}\n")
    wrk = shutil.which("wrk") if cfg.loadgen in ("wrk", "auto") else None
    if cfg.loadgen == "wrk" and wrk is None:
        raise SystemExit("wrk is not installed: `sudo apt-get install -y wrk` (Debian/Ubuntu)")
    return Bench(cfg, pg, url, seed_url, tmp, tokens_file, secret, admin_key, wrk)


# --- database counters ----------------------------------------------------------------------


def refresh(url: str) -> None:
    """Every session active and just heard from (no `resumed` gap, nothing due), dead rows
    vacuumed, and a checkpoint *before* that so the full-page images of the pages touched go
    into the refresh, not into the measured window (steady state between checkpoints)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        has_tab_close = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'test_session'::regclass "
            "AND attname = 'tab_closed_at'"
        ).fetchone()
        extra = ", tab_closed_at = NULL" if has_tab_close and has_tab_close[0] else ""
        conn.execute(
            "UPDATE test_session SET status = 'active', completion_method = NULL, "
            f"completed_at = NULL, last_heartbeat = now(), last_activity = now(){extra}"
        )
        conn.execute("VACUUM ANALYZE test_session")


def wait_for_backends(url: str, timeout: float = 10.0) -> None:
    """Until no other session is connected to the database (their statistics are flushed
    when they exit)."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()
            if row and row[0] == 0:
                break
            time.sleep(0.1)
    time.sleep(0.3)


def table_counters(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            """SELECT coalesce(sum(n_tup_upd) FILTER (WHERE relname = 'test_session'), 0),
                      coalesce(sum(n_tup_hot_upd) FILTER (WHERE relname = 'test_session'), 0),
                      coalesce(sum(n_tup_ins) FILTER (WHERE relname = 'test_session_event'), 0),
                      (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
                 FROM pg_stat_user_tables"""
        ).fetchone()
    assert row is not None
    return {"upd": int(row[0]), "hot": int(row[1]), "events": int(row[2]), "commits": int(row[3])}


def wal_lsn(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
    assert row is not None
    return int(row[0])


# --- load generators --------------------------------------------------------------------------


def run_wrk(b: Bench, port: int, duration: float, answer_share: float, path: str) -> dict[str, Any]:
    assert b.wrk is not None
    env = {
        **os.environ,
        "BENCH_TOKENS": str(b.tokens_file),
        "BENCH_ANSWER_EVERY": str(round(1 / answer_share) if answer_share else 0),
        "BENCH_PATH": path,
        "BENCH_SEQ_BASE": str(int(time.time() * 1000)),
    }
    argv = [
        b.wrk,
        "-t1",
        f"-c{b.cfg.connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(common.REPO / "bench" / "heartbeat.lua"),
        f"http://127.0.0.1:{port}",
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    statuses: dict[str, int] = {}
    samples = []
    for x in proc.stderr.splitlines():
        if x.startswith("BENCH_STATUS "):
            _, status, n = x.split()
            statuses[status] = statuses.get(status, 0) + int(n)
        elif x.startswith("BENCH_SAMPLE "):
            samples.append(x.removeprefix("BENCH_SAMPLE ")[:300])
    seconds = r["duration_us"] / 1e6
    errors = sum(r[k] for k in r if k.startswith("errors_"))
    return {
        "client": "wrk",
        "mode": "closed",
        "connections": b.cfg.connections,
        "requests": r["requests"],
        "duration_s": round(seconds, 3),
        "rps": round(r["requests"] / seconds, 1),
        "errors": errors,
        "non_2xx": r["errors_status"],
        "statuses": dict(sorted(statuses.items())),
        "error_samples": samples,
        "socket_errors": {k: r[k] for k in r if k.startswith("errors_") and k != "errors_status"},
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "mean_ms": round(r["mean_us"] / 1000, 3),
    }


def run_asyncio(
    b: Bench,
    port: int,
    *,
    mode: str,
    duration: float,
    answer_share: float,
    path: str = "",
    rate: float | None = None,
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--port",
        str(port),
        "--tokens",
        str(b.tokens_file),
        "--mode",
        mode,
        "--duration",
        str(duration),
        "--answer-share",
        str(answer_share),
        "--connections",
        str(b.cfg.connections if mode == "closed" else 256),
    ]
    if path:
        argv += ["--path", path]
    if rate:
        argv += ["--rate", str(rate)]
    proc = subprocess.run(
        argv, cwd=common.REPO, capture_output=True, text=True, timeout=duration + 60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if mode == "closed":
        result["connections"] = b.cfg.connections
    return result


def closed_load(b: Bench, port: int, duration: float, answer_share: float, path: str = "") -> Any:
    if b.wrk:
        return run_wrk(b, port, duration, answer_share, path)
    return run_asyncio(
        b, port, mode="closed", duration=duration, answer_share=answer_share, path=path
    )


# --- servers ----------------------------------------------------------------------------------


def invigilator_env(cfg: Config) -> dict[str, str]:
    """What the benchmark changes in Invigilator's settings: only the per-address rate limit,
    because every simulated candidate comes from 127.0.0.1 (in real life they come from many
    addresses); the per-candidate limit stays on. Plus whatever --server-env adds."""
    env = {
        "INVIGILATOR_SWEEPER_ENABLED": "true" if cfg.sweeper else "false",
        "INVIGILATOR_RATE_LIMIT_IP_PER_MINUTE": "0",
    }
    env.update(cfg.server_env)
    return env


def invigilator_server(b: Bench, url: str, *, nodelay_fix: bool = True) -> Server:
    """`invigilator serve`, through bench/launch.py's TCP_NODELAY fix unless told not to."""
    port = common.free_port()
    launcher = (
        [sys.executable, "-m", "bench.launch", "invigilator"]
        if nodelay_fix
        else [str(common.VENV_BIN / "invigilator")]
    )
    argv = [
        *launcher,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(b.cfg.workers),
        "--no-demo",
        "--database-url",
        url,
    ]
    env = {
        **os.environ,
        "INVIGILATOR_SECRET_KEY": b.secret,
        "INVIGILATOR_ADMIN_KEYS": b.admin_key,
        "INVIGILATOR_DATA_DIR": str(b.tmp / "data"),
        **invigilator_env(b.cfg),
    }
    env.pop("DATABASE_URL", None)
    return Server(argv, env, port, "/healthz", log=b.tmp / f"server-{port}.log")


def baseline_server(b: Bench, url: str | None) -> Server:
    port = common.free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.launch",
        "uvicorn",
        "bench.baseline_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(b.cfg.workers),
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "INVIGILATOR_SECRET_KEY": b.secret}
    env.pop("DATABASE_URL", None)
    if url:
        env["DATABASE_URL"] = url
    return Server(argv, env, port, "/healthz", log=b.tmp / f"baseline-{port}.log")


# --- scenarios --------------------------------------------------------------------------------


def measured(b: Bench, url: str, server: Server | None, load: Any, warm: Any) -> dict[str, Any]:
    """Warm up, then measure `load()` with CPU, WAL and memory around it."""
    pg_root = b.pg.root_process()
    if warm is not None:
        warm()
    api_root = server.root() if server else None
    api0, pg0, wal0, client0 = (
        common.tree_cpu_seconds(api_root),
        common.tree_cpu_seconds(pg_root),
        wal_lsn(url),
        common.children_cpu_seconds(),
    )
    load_before = common.loadavg()
    with common.MemoryPoller({"api": api_root, "postgres": pg_root}) as mem:
        result: dict[str, Any] = load()
    api1, pg1, wal1, client1 = (
        common.tree_cpu_seconds(api_root),
        common.tree_cpu_seconds(pg_root),
        wal_lsn(url),
        common.children_cpu_seconds(),
    )
    requests = max(1, result["requests"])
    result.update(
        {
            "api_cpu_s": round(api1 - api0, 3),
            "pg_cpu_s": round(pg1 - pg0, 3) if pg_root else None,
            "client_cpu_s": round(client1 - client0, 3),
            "wal_bytes": wal1 - wal0,
            "wal_bytes_per_request": round((wal1 - wal0) / requests, 1),
            "memory": mem.result(),
            "loadavg_before": load_before,
            "loadavg_after": common.loadavg(),
        }
    )
    server_cpu = (api1 - api0) + ((pg1 - pg0) if pg_root else 0.0)
    result["server_cpu_s"] = round(server_cpu, 3)
    result["server_cpu_s_per_1k"] = round(server_cpu / requests * 1000, 4)
    result["api_cpu_s_per_1k"] = round((api1 - api0) / requests * 1000, 4)
    result["pg_cpu_s_per_1k"] = round((pg1 - pg0) / requests * 1000, 4) if pg_root else None
    result["client_cpu_s_per_1k"] = round((client1 - client0) / requests * 1000, 4)
    if server:
        result["server_processes"] = server.workers()
    return result


def with_table_stats(b: Bench, url: str, run: Any) -> dict[str, Any]:
    """Run a scenario between two reads of the table statistics, taken with no server
    connected (so every backend has flushed them): HOT share, updates, events and commits per
    request over the server's whole life (warm-up included)."""
    refresh(url)
    wait_for_backends(url)
    before = table_counters(url)
    result: dict[str, Any] = run()
    wait_for_backends(url)
    after = table_counters(url)
    total = max(1, result["requests"] + result.get("warmup_requests", 0))
    upd = after["upd"] - before["upd"]
    result["row_updates"] = upd
    result["hot_updates"] = after["hot"] - before["hot"]
    result["hot_ratio"] = round((after["hot"] - before["hot"]) / upd, 4) if upd else None
    result["updates_per_request"] = round(upd / total, 3)
    result["events_per_request"] = round((after["events"] - before["events"]) / total, 4)
    result["commits_per_request"] = round((after["commits"] - before["commits"]) / total, 3)
    return result


def http_scenario(
    b: Bench,
    name: str,
    server: Server,
    url: str,
    *,
    answer_share: float = 0.0,
    path: str = "",
    rate: float | None = None,
) -> dict[str, Any]:
    cfg = b.cfg
    warm_out: dict[str, Any] = {}

    def run() -> dict[str, Any]:
        with server:
            port = server.port
            if rate is None:

                def warm() -> None:
                    warm_out.update(closed_load(b, port, cfg.warmup, answer_share, path))

                def load() -> dict[str, Any]:
                    r: dict[str, Any] = closed_load(b, port, cfg.duration, answer_share, path)
                    return r

            else:

                def warm() -> None:
                    warm_out.update(
                        run_asyncio(
                            b,
                            port,
                            mode="rate",
                            duration=cfg.warmup,
                            rate=rate,
                            answer_share=answer_share,
                            path=path,
                        )
                    )

                def load() -> dict[str, Any]:
                    return run_asyncio(
                        b,
                        port,
                        mode="rate",
                        duration=cfg.rate_duration,
                        rate=rate,
                        answer_share=answer_share,
                        path=path,
                    )

            result = measured(b, url, server, load, warm if cfg.warmup > 0 else None)
            result["warmup_requests"] = warm_out.get("requests", 0)
            result["warmup_errors"] = warm_out.get("errors", 0)
        if result["errors"] or result["warmup_errors"]:
            result["server_log_tail"] = server.log_path.read_text()[-2000:]
        return result

    b.say(f"  {name} …")
    result = with_table_stats(b, url, run)
    result.update({"scenario": name, "answer_share": answer_share})
    return result


def pgbench_scenario(b: Bench) -> dict[str, Any]:
    cfg = b.cfg
    script = b.tmp / "heartbeat.pgbench"
    script.write_text(PGBENCH_SCRIPT.format(candidates=cfg.candidates))
    conn_args, conn_env = common.pgbench_conn_args(b.url)
    env = {**os.environ, **conn_env}
    pgbench = b.pg.tool("pgbench")
    logdir = Path(tempfile.mkdtemp(dir=b.tmp, prefix="pgbench-"))

    def invoke(seconds: float, log: bool) -> subprocess.CompletedProcess[str]:
        argv = [
            pgbench,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(cfg.pgbench_clients),
            "-j",
            "2",
            "-T",
            str(max(1, round(seconds))),
            "-f",
            str(script),
        ]
        if log:
            argv += ["-l", f"--log-prefix={logdir}/tx"]
        proc = subprocess.run(
            [*argv, *conn_args], env=env, capture_output=True, text=True, timeout=seconds + 60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed: {proc.stderr[-2000:]}")
        return proc

    def load() -> dict[str, Any]:
        proc = invoke(cfg.duration, log=True)
        latencies: list[int] = []
        for f in logdir.iterdir():
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]))
        latencies.sort()
        failed = 0
        for line in proc.stdout.splitlines():
            if line.startswith("number of failed transactions"):
                failed = int(line.split(":")[1].split()[0])
        n = len(latencies)
        tps = next(
            (
                float(x.split("=")[1].split()[0])
                for x in proc.stdout.splitlines()
                if x.startswith("tps")
            ),
            None,
        )

        def pct(p: float) -> float | None:
            return latencies[min(n - 1, int(p / 100 * n))] / 1000 if n else None

        return {
            "client": "pgbench",
            "mode": "closed",
            "connections": cfg.pgbench_clients,
            "requests": n,
            "duration_s": cfg.duration,
            "rps": round(tps, 1) if tps else round(n / cfg.duration, 1),
            "errors": failed,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": latencies[-1] / 1000 if n else None,
        }

    def run() -> dict[str, Any]:
        warmup_requests = 0
        if cfg.warmup > 0:
            warm = invoke(cfg.warmup, log=False)
            for line in warm.stdout.splitlines():
                if line.startswith("number of transactions actually processed"):
                    warmup_requests = int(line.split(":")[1].split("/")[0])
        result = measured(b, b.url, None, load, None)
        result["warmup_requests"] = warmup_requests
        return result

    b.say("  pgbench …")
    result = with_table_stats(b, b.url, run)
    result.update({"scenario": "pgbench", "answer_share": 0.0})
    return result


def run_scenario(b: Bench, name: str, done: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    cfg = b.cfg
    if name == "empty":
        return http_scenario(b, name, baseline_server(b, None), b.url, path="/empty")
    if name == "straightforward":
        return http_scenario(b, name, baseline_server(b, b.url), b.url)
    if name == "straightforward_seed_schema":
        assert b.seed_url is not None
        return http_scenario(b, name, baseline_server(b, b.seed_url), b.seed_url)
    if name == "invigilator":
        return http_scenario(b, name, invigilator_server(b, b.url), b.url)
    if name == "invigilator_as_shipped":
        return http_scenario(b, name, invigilator_server(b, b.url, nodelay_fix=False), b.url)
    if name == "invigilator_mixed":
        return http_scenario(
            b, name, invigilator_server(b, b.url), b.url, answer_share=cfg.answer_share
        )
    if name == "pgbench":
        return pgbench_scenario(b)
    if name == "rate_invigilator":
        return http_scenario(b, name, invigilator_server(b, b.url), b.url, rate=cfg.rate)
    if name == "rate_straightforward":
        return http_scenario(b, name, baseline_server(b, b.url), b.url, rate=cfg.rate)
    if name == "rate_invigilator_mixed":
        # heartbeats stay at N / interval; the answer saves come on top
        return http_scenario(
            b,
            name,
            invigilator_server(b, b.url),
            b.url,
            rate=cfg.rate / (1 - cfg.answer_share),
            answer_share=cfg.answer_share,
        )
    if name == "rate_invigilator_capacity":
        # What this machine sustains: 75 % of the closed-loop maximum measured in this run
        # (or the target rate when `invigilator` was not run), as candidates every interval.
        closed = [x["rps"] for x in done.get("invigilator", [])]
        rate = 0.75 * common.median(closed) if closed else cfg.rate
        result = http_scenario(b, name, invigilator_server(b, b.url), b.url, rate=rate)
        result["simulated_candidates"] = round(rate * cfg.interval)
        return result
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(ALL_SCENARIOS)}")


# --- summary ------------------------------------------------------------------------------------


def pick_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """With several rounds, the round with the median throughput (closed loop) or the median
    p99 (open loop) stands for the scenario; every round's key figures are kept beside it."""
    if len(runs) == 1:
        return runs[0]
    key = "p99_ms" if runs[0].get("mode") == "rate" else "rps"
    ordered = sorted(runs, key=lambda x: x.get(key) or 0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds"] = [
        {k: x.get(k) for k in ("rps", "p50_ms", "p99_ms", "errors", "server_cpu_s_per_1k")}
        for x in runs
    ]
    return chosen


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def get(name: str, key: str) -> Any:
        return results.get(name, {}).get(key)

    r = common.ratio
    ratios = {
        "throughput_vs_empty": r(get("invigilator", "rps"), get("empty", "rps")),
        "throughput_vs_straightforward": r(
            get("invigilator", "rps"), get("straightforward", "rps")
        ),
        "throughput_vs_straightforward_seed_schema": r(
            get("invigilator", "rps"), get("straightforward_seed_schema", "rps")
        ),
        "throughput_vs_pgbench": r(get("invigilator", "rps"), get("pgbench", "rps")),
        "straightforward_vs_empty": r(get("straightforward", "rps"), get("empty", "rps")),
        "cpu_per_request_vs_straightforward_closed": r(
            get("invigilator", "server_cpu_s_per_1k"), get("straightforward", "server_cpu_s_per_1k")
        ),
        "cpu_per_request_vs_straightforward_rate": r(
            get("rate_invigilator", "server_cpu_s_per_1k"),
            get("rate_straightforward", "server_cpu_s_per_1k"),
        ),
        "wal_per_request_vs_straightforward_seed_schema": r(
            get("invigilator", "wal_bytes_per_request"),
            get("straightforward_seed_schema", "wal_bytes_per_request"),
        ),
    }
    ratios = {k: round(v, 3) if v is not None else None for k, v in ratios.items()}
    inv = [v for k, v in results.items() if "invigilator" in k]
    goals: dict[str, dict[str, Any]] = {}

    def goal(key: str, text: str, value: Any, ok: bool | None) -> None:
        goals[key] = {"goal": text, "measured": value, "met": ok}

    t_empty = ratios["throughput_vs_empty"]
    goal(
        "throughput_vs_empty",
        "heartbeat req/s ≥ 70% of the empty endpoint's",
        t_empty,
        None if t_empty is None else t_empty >= 0.7,
    )
    t_sf = ratios["throughput_vs_straightforward"]
    goal(
        "throughput_vs_straightforward",
        "heartbeat req/s ≥ 2× the straightforward one's",
        t_sf,
        None if t_sf is None else t_sf >= 2.0,
    )
    errors = sum(x.get("errors", 0) + x.get("warmup_errors", 0) for x in inv) if inv else None
    goal(
        "zero_errors",
        "zero errors (every Invigilator scenario, warm-ups included)",
        errors,
        None if errors is None else errors == 0,
    )
    rate = results.get("rate_invigilator")
    if rate:
        p99 = rate.get("p99_ms")
        achieved = rate.get("rps", 0) / rate.get("target_rps", 1)
        goal(
            "p99_at_rate",
            "p99 < 50 ms at N candidates heartbeating every 15 s (open loop)",
            {"p99_ms": p99, "achieved_share_of_target_rate": round(achieved, 3)},
            p99 is not None and p99 < 50 and achieved > 0.97 and rate.get("errors") == 0,
        )
    # CPU per heartbeat at equal offered load (open loop) when both kept up; else closed loop.
    rate_ok = all(
        name in results and results[name].get("errors") == 0
        for name in ("rate_invigilator", "rate_straightforward")
    )
    cpu = (
        ratios["cpu_per_request_vs_straightforward_rate"]
        if rate_ok
        else ratios["cpu_per_request_vs_straightforward_closed"]
    )
    goal(
        "cpu_vs_straightforward",
        "server CPU per heartbeat ≤ 50% of the straightforward one's"
        + (" (open loop, equal load)" if rate_ok else " (closed loop)"),
        cpu,
        None if cpu is None else cpu <= 0.5,
    )
    capacity = results.get("rate_invigilator_capacity")
    if capacity:
        goal(
            "capacity",
            "open loop at 75% of the closed-loop maximum (reported)",
            {
                "rps": capacity.get("rps"),
                "simulated_candidates_every_interval": capacity.get("simulated_candidates"),
                "p50_ms": capacity.get("p50_ms"),
                "p99_ms": capacity.get("p99_ms"),
                "errors": capacity.get("errors"),
            },
            None,
        )
    hot = get("invigilator", "hot_ratio")
    goal(
        "hot_ratio",
        "HOT share of heartbeat updates ≥ 90%",
        hot,
        None if hot is None else hot >= 0.9,
    )
    peak = max((x["memory"]["api"]["peak_rss_mib"] for x in inv if "memory" in x), default=None)
    goal("peak_rss", "peak RSS of the API processes under the largest load (reported)", peak, None)
    return {"ratios": ratios, "goals": goals}


def render(results: dict[str, dict[str, Any]], summary: dict[str, Any]) -> str:
    rows = []
    for name, x in results.items():
        hot = x.get("hot_ratio")
        rows.append(
            [
                name,
                f"{x.get('client')} {x.get('mode')}"
                + (
                    f" {x['target_rps']:.0f}/s"
                    if x.get("target_rps")
                    else f" c={x.get('connections')}"
                ),
                x.get("rps"),
                x.get("p50_ms"),
                x.get("p99_ms"),
                x.get("errors"),
                x.get("server_cpu_s_per_1k"),
                x.get("api_cpu_s_per_1k"),
                x.get("pg_cpu_s_per_1k"),
                x.get("wal_bytes_per_request"),
                f"{hot * 100:.0f}%" if hot is not None else "–",
                x.get("commits_per_request"),
                x.get("memory", {}).get("api", {}).get("peak_rss_mib"),
            ]
        )
    table = common.markdown_table(
        [
            "scenario",
            "load",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU s/1k req",
            "API",
            "PG",
            "WAL B/req",
            "HOT",
            "commits/req",
            "API peak RSS MiB",
        ],
        rows,
    )
    ratio_rows = [[k, v] for k, v in summary["ratios"].items()]
    goal_rows = [
        [g["goal"], json.dumps(g["measured"]), {True: "met", False: "NOT met", None: "–"}[g["met"]]]
        for g in summary["goals"].values()
    ]
    return "\n\n".join(
        [
            table,
            common.markdown_table(["ratio", "value"], ratio_rows),
            common.markdown_table(["goal", "measured", ""], goal_rows),
        ]
    )


def run(cfg: Config) -> dict[str, Any]:
    """Set up, run every scenario, and return (and write) the results."""
    unknown = set(cfg.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="invigilator-bench-hb-") as tmpdir,
        common.postgres() as pg,
    ):
        tmp = Path(tmpdir)
        b = setup(cfg, pg, tmp)
        if cfg.loadgen == "auto" and b.wrk is None:
            b.say(
                "wrk not found (install: `sudo apt-get install -y wrk`); closed-loop scenarios "
                "use the asyncio client instead"
            )
        with pg.connect() as conn:
            machine = common.machine_info(conn)
        b.say(
            f"setup done in {time.monotonic() - started:.1f}s; "
            f"running {len(cfg.scenarios)} scenario(s)"
        )
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in cfg.scenarios}
        for r in range(cfg.rounds):
            if cfg.rounds > 1:
                b.say(f"round {r + 1} of {cfg.rounds}")
            for name in cfg.scenarios:
                rounds[name].append(run_scenario(b, name, rounds))
        results = {name: pick_round(runs) for name, runs in rounds.items()}
        machine["loadavg_at_end"] = common.loadavg()
    summary = compare(results)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["rate"] = round(cfg.rate, 1)
    config["invigilator_env"] = invigilator_env(cfg)
    data = {
        "benchmark": "heartbeat",
        "machine": machine,
        "config": config,
        "load_generator": "wrk" if shutil.which("wrk") and cfg.loadgen != "asyncio" else "asyncio",
        "results": results,
        **summary,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    path = common.write_results("heartbeat", data, cfg.out)
    data["written_to"] = str(path)
    return data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Heartbeat throughput and latency over HTTP, with baselines (issue 6).",
    )
    d = Config()
    p.add_argument("--candidates", type=int, default=d.candidates)
    p.add_argument("--workers", type=int, default=d.workers, help="API processes per server")
    p.add_argument("--duration", type=float, default=d.duration, help="closed-loop seconds")
    p.add_argument("--warmup", type=float, default=d.warmup)
    p.add_argument("--connections", type=int, default=d.connections)
    p.add_argument("--interval", type=float, default=d.interval, help="heartbeat interval (s)")
    p.add_argument("--rate-duration", type=float, default=d.rate_duration)
    p.add_argument("--answer-share", type=float, default=d.answer_share)
    p.add_argument("--pgbench-clients", type=int, default=d.pgbench_clients)
    p.add_argument("--loadgen", choices=("auto", "wrk", "asyncio"), default=d.loadgen)
    p.add_argument("--no-sweeper", action="store_true", help="serve without its sweeper")
    p.add_argument("--rounds", type=int, default=d.rounds, help="repeat all, keep the median")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the Invigilator servers (repeatable)",
    )
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    p.add_argument("--quick", action="store_true", help="5 s closed loop, 15 s open loop")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/heartbeat.json)")
    a = p.parse_args(argv)
    cfg = Config(
        candidates=a.candidates,
        workers=a.workers,
        duration=5.0 if a.quick else a.duration,
        warmup=10.0 if a.quick else a.warmup,
        connections=a.connections,
        interval=a.interval,
        rate_duration=15.0 if a.quick else a.rate_duration,
        answer_share=a.answer_share,
        pgbench_clients=a.pgbench_clients,
        loadgen=a.loadgen,
        sweeper=not a.no_sweeper,
        rounds=max(1, a.rounds),
        server_env=dict(x.split("=", 1) for x in a.server_env),
        scenarios=[s.strip() for s in a.scenarios.split(",") if s.strip()],
        out=a.out,
    )
    data = run(cfg)
    m = data["machine"]
    print(
        f"\nheartbeat benchmark — {m['nproc']} × {m['cpu_model']}, {m['ram_gib']} GiB, "
        f"PostgreSQL {m.get('postgresql')}, load avg {m['loadavg_at_start']} → "
        f"{m['loadavg_at_end']}, {cfg.workers} API worker(s), {cfg.candidates:,} candidates, "
        f"load generator {data['load_generator']}\n"
    )
    print(render(data["results"], data))
    print(f"\nresults: {data['written_to']} ({data['elapsed_s']} s)")


if __name__ == "__main__":
    main()
