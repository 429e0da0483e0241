"""Answer saves on coding-test sessions: what one ~2 KB edit costs as the session's answers
grow from 3 KB to 900 KB, with today's storage (one row per question, migration 0004) and,
measured in the same run on the same server, the two baselines:

- `jsonb`: the storage before it — every save merges into one JSONB value per session
  (`UPDATE … SET pending_answers = pending_answers || …`), the statement Invigilator ran;
- `floor`: one upsert of one row on a bare table, the least a save can cost.

For each size: PostgreSQL CPU and WAL per save for the three (SQL, one client), and saves/s,
p50/p99 and server CPU per save (API + PostgreSQL) through the HTTP API with 16 concurrent
clients for today's storage.

    .venv/bin/python -m bench.answers            # the whole table (a few minutes)
    .venv/bin/python -m bench.answers --quick    # fewer saves per size

Results: bench/results/answers.json and a Markdown table on stdout (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from bench import common
from invigilator import sql
from invigilator.config import Settings
from invigilator.db import migrate

#: The session sizes of the issue's table: answers of ~KB of code per question.
SIZES_KB = (3, 66, 258, 901)
EDIT_BYTES = 2048
CLIENTS = 16

JSONB_SAVE = """
UPDATE bench_jsonb t
   SET pending_answers = t.pending_answers || (
           SELECT coalesce(jsonb_object_agg(a.key, a.value), '{}'::jsonb)
             FROM jsonb_each(%(answers)s::jsonb) a
            WHERE coalesce((t.answer_seq ->> a.key)::bigint, -1) <= %(seq)s::bigint),
       answer_seq = t.answer_seq || (
           SELECT coalesce(jsonb_object_agg(a.key, %(seq)s::bigint), '{}'::jsonb)
             FROM jsonb_each(%(answers)s::jsonb) a
            WHERE coalesce((t.answer_seq ->> a.key)::bigint, -1) <= %(seq)s::bigint),
       last_activity = now()
 WHERE t.candidate_id = %(candidate_id)s
RETURNING t.*, octet_length(t.pending_answers::text) AS answers_bytes
"""

FLOOR_SAVE = """
INSERT INTO bench_floor AS f (candidate_id, question, value, seq)
VALUES (%(candidate_id)s, %(question)s, %(value)s, %(seq)s)
    ON CONFLICT (candidate_id, question) DO UPDATE
   SET value = excluded.value, seq = excluded.seq WHERE f.seq <= excluded.seq
"""


def code(rng: random.Random, size: int) -> str:
    """Text shaped like code (identifiers, operators, indentation): it compresses like code."""
    words = ["def", "return", "for", "in", "if", "else", "while", "x", "y", "total", "node"]
    out: list[str] = []
    length = 0
    while length < size:
        line = "    " * rng.randint(0, 3) + " ".join(
            rng.choice(words) + rng.choice(["", "(", ")", " =", ":", "+ 1", "[i]"])
            for _ in range(rng.randint(3, 9))
        )
        line += f"  # {''.join(rng.choices(string.ascii_lowercase, k=8))}"
        out.append(line)
        length += len(line) + 1
    return "\n".join(out)[:size]


def session_answers(rng: random.Random, total_kb: int) -> dict[str, str]:
    """About `total_kb` of answers, in questions of up to ~45 KB (as a coding test has)."""
    answers: dict[str, str] = {}
    left = total_kb * 1024
    while left > 0:
        size = min(left, rng.randint(2_000, 45_000))
        answers[f"q{len(answers) + 1}"] = code(rng, size)
        left -= size
    return answers


def _ratio(a: float | None, b: float | None) -> float | None:
    value = common.ratio(a, b)
    return None if value is None else round(value, 2)


def wal(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def measure_sql(pg: common.Postgres, url: str, saves: int) -> list[dict[str, Any]]:
    """PostgreSQL CPU and WAL per save, one client, for the three storages and each size."""
    rng = random.Random(7)
    settings = Settings()
    params = settings.policy().sql_params()
    q = sql.queries()
    rows: list[dict[str, Any]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_jsonb (candidate_id text PRIMARY KEY, pending_answers jsonb,"
            " answer_seq jsonb, last_activity timestamptz)"
        )
        conn.execute(
            "CREATE TABLE bench_floor (candidate_id text, question text, value jsonb,"
            " seq bigint, PRIMARY KEY (candidate_id, question))"
        )
        for kb in SIZES_KB:
            cid = f"sql-{kb}"
            answers = session_answers(rng, kb)
            conn.execute("INSERT INTO candidate VALUES (%s)", (cid,))
            conn.execute(
                "INSERT INTO test_session (candidate_id, test_duration_minutes) VALUES (%s, 600)",
                (cid,),
            )
            conn.execute(
                "INSERT INTO test_session_answer (candidate_id, question, value, seq, bytes)"
                " SELECT %s, key, value, 0, octet_length(value::text)"
                " FROM jsonb_each(%s::jsonb)",
                (cid, Jsonb(answers)),
            )
            conn.execute(
                "INSERT INTO bench_jsonb VALUES (%s, %s, %s, now())",
                (cid, Jsonb(answers), Jsonb(dict.fromkeys(answers, 0))),
            )
            conn.execute(
                "INSERT INTO bench_floor SELECT %s, key, value, 0 FROM jsonb_each(%s::jsonb)",
                (cid, Jsonb(answers)),
            )
            conn.execute("VACUUM ANALYZE bench_jsonb, bench_floor, test_session_answer")
            stored = conn.execute(
                "SELECT pg_column_size(pending_answers) FROM bench_jsonb WHERE candidate_id = %s",
                (cid,),
            ).fetchone()
            questions = list(answers)
            result: dict[str, Any] = {
                "answers_kb": round(len(json.dumps(answers)) / 1024, 1),
                "stored_kib": round((stored[0] if stored else 0) / 1024, 1),
            }
            for name in ("rows", "jsonb", "floor"):
                backend = pg.root_process()
                cpu0, wal0 = common.tree_cpu_seconds(backend), wal(conn)
                for seq in range(1, saves + 1):
                    question = rng.choice(questions)
                    value = code(rng, EDIT_BYTES)
                    if name == "rows":
                        conn.execute(
                            q["save_answers"],
                            {
                                **params,
                                "candidate_id": cid,
                                "answers": Jsonb({question: value}),
                                "seq": seq,
                            },
                        )
                    elif name == "jsonb":
                        conn.execute(
                            JSONB_SAVE,
                            {"candidate_id": cid, "answers": Jsonb({question: value}), "seq": seq},
                        )
                    else:
                        conn.execute(
                            FLOOR_SAVE,
                            {
                                "candidate_id": cid,
                                "question": question,
                                "value": Jsonb(value),
                                "seq": seq,
                            },
                        )
                cpu1, wal1 = common.tree_cpu_seconds(backend), wal(conn)
                result[name] = {
                    "pg_cpu_ms_per_save": round((cpu1 - cpu0) * 1000 / saves, 3),
                    "wal_bytes_per_save": round((wal1 - wal0) / saves),
                }
            for name in ("rows", "jsonb"):
                result[name]["cpu_vs_floor"] = _ratio(
                    result[name]["pg_cpu_ms_per_save"], result["floor"]["pg_cpu_ms_per_save"]
                )
                result[name]["wal_vs_floor"] = _ratio(
                    result[name]["wal_bytes_per_save"], result["floor"]["wal_bytes_per_save"]
                )
            rows.append(result)
            print(f"sql {kb} KB: {json.dumps(result)}", file=sys.stderr, flush=True)
    return rows


async def api_round(
    base: str, admin: str, kb: int, seconds: float, pg: common.Postgres, api: Any
) -> dict[str, Any]:
    """CLIENTS candidates, each with a session holding ~kb of answers, saving 2 KB edits in a
    closed loop for `seconds`: saves/s, latency and server CPU per save."""
    rng = random.Random(kb)
    staff = {"Authorization": f"Bearer {admin}"}
    limits = httpx.Limits(max_connections=CLIENTS * 2)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        tokens: list[tuple[str, str, list[str]]] = []
        for i in range(CLIENTS):
            cid = f"api-{kb}-{i}-{secrets.token_hex(3)}"
            started = await client.post(
                "/api/v1/sessions",
                headers=staff,
                json={"candidate_id": cid, "duration_minutes": 600, "create_candidate": True},
            )
            token = started.json()["token"]
            answers = session_answers(rng, kb)
            for j, (question, value) in enumerate(answers.items()):  # grow it to its size
                await client.patch(
                    f"/api/v1/sessions/{cid}/answers",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"answers": {question: value}, "seq": j + 1},
                )
            tokens.append((cid, token, list(answers)))
        latencies: list[float] = []
        errors = 0
        stop = time.monotonic() + seconds
        cpu0 = common.tree_cpu_seconds(api) + common.tree_cpu_seconds(pg.root_process())

        async def candidate(cid: str, token: str, questions: list[str]) -> None:
            nonlocal errors
            seq = 10_000
            while time.monotonic() < stop:
                seq += 1
                body = {"answers": {rng.choice(questions): code(rng, EDIT_BYTES)}, "seq": seq}
                t = time.perf_counter()
                r = await client.patch(
                    f"/api/v1/sessions/{cid}/answers",
                    headers={"Authorization": f"Bearer {token}"},
                    json=body,
                )
                latencies.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200

        t0 = time.monotonic()
        await asyncio.gather(*(candidate(*t) for t in tokens))
        elapsed = time.monotonic() - t0
        cpu1 = common.tree_cpu_seconds(api) + common.tree_cpu_seconds(pg.root_process())
    latencies.sort()
    n = len(latencies)
    return {
        "answers_kb": kb,
        "saves": n,
        "errors": errors,
        "saves_per_s": round(n / elapsed, 1),
        "p50_ms": round(latencies[n // 2], 1) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))], 1) if n else None,
        "server_cpu_ms_per_save": round((cpu1 - cpu0) * 1000 / n, 2) if n else None,
    }


def measure_api(pg: common.Postgres, url: str, seconds: float, tmp: Path) -> list[dict[str, Any]]:
    admin, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    port = common.free_port()
    argv = [
        sys.executable, "-m", "bench.launch", "invigilator", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--no-demo", "--database-url", url,
    ]  # fmt: skip
    env = {
        **__import__("os").environ,
        "INVIGILATOR_SECRET_KEY": secret,
        "INVIGILATOR_ADMIN_KEYS": admin,
        "INVIGILATOR_DATA_DIR": str(tmp / "data"),
        "INVIGILATOR_RATE_LIMIT_IP_PER_MINUTE": "0",
        "INVIGILATOR_RATE_LIMIT_CANDIDATE_PER_MINUTE": "0",
        "INVIGILATOR_MAX_ANSWERS_BYTES": str(4 * 1024 * 1024),
    }
    env.pop("DATABASE_URL", None)
    rows = []
    with common.Server(argv, env, port, "/healthz", log=tmp / "server.log") as server:
        for kb in SIZES_KB:
            row = asyncio.run(api_round(server.base_url, admin, kb, seconds, pg, server.root()))
            print(f"api {kb} KB: {json.dumps(row)}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def render(result: dict[str, Any]) -> str:
    api = {r["answers_kb"]: r for r in result["api"]}
    table = []
    for kb, s in zip(SIZES_KB, result["sql"], strict=True):
        a = api.get(kb, {})
        table.append(
            [
                f"{s['answers_kb']} KB / {s['stored_kib']} KiB",
                a.get("saves_per_s"),
                f"{a.get('p50_ms')} / {a.get('p99_ms')} ms",
                a.get("server_cpu_ms_per_save"),
                f"{s['rows']['pg_cpu_ms_per_save']} ms, {s['rows']['wal_bytes_per_save']} B",
                f"{s['jsonb']['pg_cpu_ms_per_save']} ms, {s['jsonb']['wal_bytes_per_save']} B",
                f"{s['floor']['pg_cpu_ms_per_save']} ms, {s['floor']['wal_bytes_per_save']} B",
                f"{s['rows']['cpu_vs_floor']}× / {s['rows']['wal_vs_floor']}×",
            ]
        )
    header = [
        "the session's answers (text / stored as one JSONB)",
        "saves/s via the API",
        "p50 / p99",
        "server CPU per save (ms)",
        "rows: PostgreSQL CPU, WAL per save",
        "jsonb (before): PostgreSQL CPU, WAL",
        "floor (one-row upsert): CPU, WAL",
        "rows vs floor (CPU / WAL)",
    ]
    first, last = result["api"][0], result["api"][-1]
    ratio = _ratio(last["saves_per_s"], first["saves_per_s"])
    return (
        common.markdown_table(header, table)
        + f"\n\nAPI saves/s at {SIZES_KB[-1]} KB vs {SIZES_KB[0]} KB: {ratio}×\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer saves, shorter API rounds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    # CPU is read in clock ticks (10 ms): enough saves that a tick is a small share.
    saves, seconds = (1000, 5.0) if args.quick else (3000, 15.0)
    with common.postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        url = pg.create_database("bench_answers")
        migrate.upgrade(url, create_candidate_table=True)
        with psycopg.connect(url, autocommit=True) as conn:
            info = common.machine_info(conn)
        result = {
            "machine": info,
            "saves_per_size": saves,
            "api_seconds_per_size": seconds,
            "sql": measure_sql(pg, url, saves),
            "api": measure_api(pg, url, seconds, Path(tmp)),
        }
    path = common.write_results("answers", result, args.out)
    print(render(result))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
