"""An asyncio HTTP/1.1 load generator, run as its own process by bench.heartbeat.

Two modes, both rotating over candidates (each request carries that candidate's token):

- `rate` (open loop): request i is *scheduled* at start + i / rate, whatever happened to the
  ones before, and its latency is measured from that scheduled moment. A slow server therefore
  shows up as latency instead of quietly lowering the offered load (no coordinated omission).
  Candidate i % N sends request i, so N candidates at `rate` = N / interval each beat every
  `interval` seconds: 20,000 candidates every 15 s is --rate 1333.3.
- `closed` (closed loop): `connections` clients, each sending its next request when the last
  answered (what wrk does; used when wrk is not installed).

A share of the requests are answer saves (PATCH .../answers with an increasing seq) instead of
heartbeats. `--coding` makes it a coding test's mix instead (bench.answers): each candidate
sends one heartbeat and then three ~2 KB edits of code, a new question each, in turn; at
`--rate` = N × 4 / 15 that is a heartbeat every 15 s and a save every 5 s per candidate.
Prints one JSON object on stdout. Keep-alive connections, a minimal HTTP/1.1 parser (status
line, Content-Length or chunked), so the client costs little CPU on a shared machine.

    python -m bench.loadgen --port 8000 --tokens tokens.tsv --mode rate --rate 1333 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late_starts: int = 0  # open loop: requests that waited for a free connection

    def summary(self, elapsed: float, offered: int) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 3)

        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        non2xx = sum(n for s, n in self.statuses.items() if not 200 <= s < 300)
        return {
            "requests": ok + non2xx,
            "ok": ok,
            "offered": offered,
            "duration_s": round(elapsed, 3),
            "rps": round((ok + non2xx) / elapsed, 1) if elapsed else None,
            "errors": non2xx + sum(self.errors.values()),
            "non_2xx": non2xx,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "socket_errors": dict(self.errors),
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(lat[-1] * 1000, 3) if lat else None,
            "mean_ms": round(sum(lat) / len(lat) * 1000, 3) if lat else None,
            "queued_for_connection": self.late_starts,
        }


class Requests:
    """Builds request i: a heartbeat, or every `answer_every`-th an answer save."""

    def __init__(self, tokens: list[tuple[str, str]], port: int, answer_share: float, path: str):
        self.tokens = tokens
        self.host = f"127.0.0.1:{port}".encode()
        self.answer_every = round(1 / answer_share) if answer_share > 0 else 0
        self.fixed_path = path.encode() if path else None
        self.seq_base = int(time.time() * 1000)
        self.heartbeat_body = b'{"active":true}'

    def build(self, i: int) -> bytes:
        cid, token = self.tokens[i % len(self.tokens)]
        if self.answer_every and i % self.answer_every == self.answer_every - 1:
            body = json.dumps(
                {"answers": {f"q{i % 20}": f"answer {i}"}, "seq": self.seq_base + i},
                separators=(",", ":"),
            ).encode()
            method, path = b"PATCH", f"/api/v1/sessions/{cid}/answers".encode()
        else:
            body = self.heartbeat_body
            method, path = b"POST", f"/api/v1/sessions/{cid}/heartbeat".encode()
        if self.fixed_path is not None:
            path = self.fixed_path
        return b"".join(
            (
                method,
                b" ",
                path,
                b" HTTP/1.1\r\nHost: ",
                self.host,
                b"\r\nAuthorization: Bearer ",
                token.encode(),
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )


class CodingRequests(Requests):
    """Request i: candidate i % N's k-th request (k = i // N), a heartbeat when k % 4 == 0,
    else a save of a ~2 KB edit (`edits`: JSON-encoded strings, reused in turn)."""

    def __init__(self, tokens: list[tuple[str, str]], port: int, edits: list[bytes]):
        super().__init__(tokens, port, 0.0, "")
        self.edits = edits

    def build(self, i: int) -> bytes:
        cid, token = self.tokens[i % len(self.tokens)]
        k = i // len(self.tokens)
        if k % 4 == 0:
            body = self.heartbeat_body
            method, path = b"POST", f"/api/v1/sessions/{cid}/heartbeat".encode()
        else:
            edit = self.edits[i % len(self.edits)]
            body = b'{"answers":{"e%d":%s},"seq":%d}' % (k, edit, self.seq_base + k)
            method, path = b"PATCH", f"/api/v1/sessions/{cid}/answers".encode()
        return b"".join(
            (
                method,
                b" ",
                path,
                b" HTTP/1.1\r\nHost: ",
                self.host,
                b"\r\nAuthorization: Bearer ",
                token.encode(),
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )


#: Idle connections older than this are closed rather than reused: uvicorn closes a keep-alive
#: connection after 5 s idle, and a request written into one it is closing fails (a browser
#: would retry it; counting it as the server's error would be wrong).
MAX_IDLE_SECONDS = 4.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() - self.idle_since < MAX_IDLE_SECONDS

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bool]:
        """Send one request, read the whole response; (status, keep-alive)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        chunked = False
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        return status, keep_alive

    def close(self) -> None:
        self.writer.close()


async def _one(
    conn: Connection | None, port: int, request: bytes, stats: Stats, limit: float
) -> tuple[Connection | None, bool]:
    """One request on `conn` (opened when None): (the connection if reusable, answered?)."""
    try:
        if conn is None:
            conn = await asyncio.wait_for(Connection.open(port), limit)
        status, keep_alive = await asyncio.wait_for(conn.send(request), limit)
    except TimeoutError:
        stats.errors["timeout"] += 1
        answered = False
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        stats.errors[type(exc).__name__] += 1
        answered = False
    else:
        stats.statuses[status] += 1
        if keep_alive:
            conn.idle_since = time.monotonic()
            return conn, True
        answered = True
    if conn is not None:
        conn.close()
    return None, answered


async def run_rate(args: argparse.Namespace, reqs: Requests) -> dict[str, object]:
    stats = Stats()
    idle: list[Connection] = []
    slots = asyncio.Semaphore(args.connections)
    total = int(args.rate * args.duration)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def fire(i: int, scheduled: float) -> None:
        if slots.locked():
            stats.late_starts += 1
        async with slots:
            conn = None
            while idle and conn is None:
                conn = idle.pop()
                if not conn.fresh():
                    conn.close()
                    conn = None
            conn, answered = await _one(conn, args.port, reqs.build(i), stats, args.timeout)
            if answered:
                stats.latencies.append(loop.time() - scheduled)
            if conn is not None:
                idle.append(conn)

    start = loop.time() + 0.05
    for i in range(total):
        scheduled = start + i / args.rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fire(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, unfinished = await asyncio.wait(tasks, timeout=args.timeout + 5)
        for task in unfinished:
            task.cancel()
            stats.errors["unfinished"] += 1
    elapsed = loop.time() - start
    for conn in idle:
        conn.close()
    result = stats.summary(elapsed, total)
    result["target_rps"] = args.rate
    return result


async def run_closed(args: argparse.Namespace, reqs: Requests) -> dict[str, object]:
    stats = Stats()
    loop = asyncio.get_running_loop()
    end = loop.time() + args.duration
    counter = 0

    async def client(k: int) -> None:
        nonlocal counter
        conn: Connection | None = None
        while loop.time() < end:
            i = counter
            counter += 1
            sent = loop.time()
            conn, answered = await _one(conn, args.port, reqs.build(i), stats, args.timeout)
            if answered:
                stats.latencies.append(loop.time() - sent)
        if conn is not None:
            conn.close()

    started = loop.time()
    await asyncio.gather(*(client(k) for k in range(args.connections)))
    return stats.summary(loop.time() - started, counter)


def load_tokens(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            cid, token = line.split("\t", 1)
            pairs.append((cid, token))
    return pairs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=Path, required=True, help="candidate_id<TAB>token per line")
    p.add_argument("--mode", choices=("rate", "closed"), default="rate")
    p.add_argument("--rate", type=float, default=1333.3, help="requests/s (rate mode)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds")
    p.add_argument("--connections", type=int, default=64, help="max open connections")
    p.add_argument("--answer-share", type=float, default=0.0, help="share of answer saves")
    p.add_argument("--path", default="", help="send every request to this path instead")
    p.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    p.add_argument("--coding", type=Path, default=None, help="a coding test's mix: JSON edits")
    args = p.parse_args(argv)
    reqs: Requests
    if args.coding:
        edits = [json.dumps(e).encode() for e in json.loads(args.coding.read_text())]
        reqs = CodingRequests(load_tokens(args.tokens), args.port, edits)
    else:
        reqs = Requests(load_tokens(args.tokens), args.port, args.answer_share, args.path)
    runner = run_rate if args.mode == "rate" else run_closed
    result = asyncio.run(runner(args, reqs))
    result["mode"] = args.mode
    result["client"] = "asyncio"
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
