"""What the API keeps in memory per candidate, in each worker process: the verified-token cache
entry (api/tokens.py, the token string and its claims) and the per-candidate rate-limit bucket
(api/ratelimit.py), each bounded at 100,000 entries. Measured with tracemalloc over N distinct
candidates, each token and id a fresh string as a request brings it.

    .venv/bin/python -m bench.memory [--candidates 20000]
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

from invigilator.api import ratelimit, tokens


def measure(candidates: int) -> dict[str, float]:
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()).encode() for _ in range(candidates)]
    raw = [tokens.issue(c.decode(), now + timedelta(hours=3), secret, now).encode() for c in ids]
    buckets = ratelimit.TokenBuckets(300, 60)
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    for token in raw:
        tokens.verify(token.decode(), secret)
    gc.collect()
    cached = tracemalloc.get_traced_memory()[0]
    stamp = time.monotonic()
    for cid in ids:
        buckets.take(cid.decode(), stamp)
    gc.collect()
    bucketed = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_token = (cached - start) / candidates
    per_bucket = (bucketed - cached) / candidates
    bound = min(tokens._VERIFIED_MAX, ratelimit.MAX_KEYS)
    return {
        "candidates": candidates,
        "token_length": len(raw[0]),
        "verified_token_bytes_per_candidate": round(per_token),
        "rate_limit_bucket_bytes_per_candidate": round(per_bucket),
        "bytes_per_candidate_per_worker": round(per_token + per_bucket),
        "bound_entries": bound,
        "mib_per_worker_at_the_bound": round((per_token + per_bucket) * bound / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=20_000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.candidates)))


if __name__ == "__main__":
    main()
