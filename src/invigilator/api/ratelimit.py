"""Rate limits on the candidate API: one token bucket per candidate and one per client IP.

A request over either limit gets a 429 problem+json (`code` `rate_limited`) with `Retry-After`,
before it reaches a route or the database. The buckets live in this process: with N worker
processes each enforces the limits on its own, so the effective limit is up to N times the
configured one (RELIABILITY.md).

- Per candidate: keyed by the candidate a *valid* token opens, so nobody can use up another
  candidate's allowance by sending requests with a bad token for their path.
- Per IP: every candidate-API request, authenticated or not, keyed by the peer address the
  server sees. Behind a reverse proxy, run uvicorn with `--forwarded-allow-ips` so that is the
  client's; otherwise the proxy's address shares one bucket. Many candidates of an exam hall
  may share one address (NAT), hence the generous default.

Defaults (`INVIGILATOR_RATE_LIMIT_*`, per minute; 0 turns a limit off) leave normal use far
below them: the browser beats every 15 s and autosaves a few times a minute.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from invigilator.api import tokens
from invigilator.api.problems import problem
from invigilator.config import Settings

#: The candidate API: (method, last path segment) of every route a candidate's browser calls.
CANDIDATE_CALLS = frozenset(
    {
        ("GET", "state"),
        ("POST", "heartbeat"),
        ("POST", "activity"),
        ("POST", "events"),
        ("POST", "sections"),
        ("PATCH", "answers"),
        ("POST", "complete"),
        ("POST", "tab-close"),
    }
)
_CANDIDATE_PATH = re.compile(r"^/api/v1/sessions/([^/]+)/([a-z-]+)$")
MAX_KEYS = 100_000  # buckets kept per limit; the least recently used go first


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """`burst` requests at once, then `per_minute` a minute, for each key."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = MAX_KEYS) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def candidate_call(method: str, path: str) -> str | None:
    """The candidate_id of a candidate-API request, or None for any other request."""
    match = _CANDIDATE_PATH.match(path)
    if match and (method, match.group(2)) in CANDIDATE_CALLS:
        return match.group(1)
    return None


#: Set on the scope once a request has been counted (by the heartbeat fast path, which then
#: handed the request on), so the middleware does not count it twice.
COUNTED = "invigilator.rate_counted"


class RateLimits:
    """Both limits' buckets, shared by the middleware and the heartbeat fast path."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
        s = settings
        self.per_candidate = (
            TokenBuckets(s.rate_limit_candidate_per_minute, s.rate_limit_candidate_burst)
            if s.rate_limit_candidate_per_minute > 0
            else None
        )
        self.per_ip = (
            TokenBuckets(s.rate_limit_ip_per_minute, s.rate_limit_ip_burst)
            if s.rate_limit_ip_per_minute > 0
            else None
        )

    @property
    def enabled(self) -> bool:
        return self.per_ip is not None or self.per_candidate is not None

    def take(self, scope: Scope, candidate_id: str, *, token_opens: bool) -> Response | None:
        """Count one candidate-API request; the 429 to answer when it is over a limit.
        `token_opens`: the request carries a valid token for `candidate_id`."""
        scope[COUNTED] = True
        now = self.clock()
        wait, who = 0.0, ""
        if self.per_ip is not None:
            client = scope.get("client")
            wait, who = self.per_ip.take(client[0] if client else "unknown", now), "address"
        if not wait and self.per_candidate is not None and token_opens:
            wait, who = self.per_candidate.take(candidate_id, now), "candidate"
        if not wait:
            return None
        seconds = max(1, math.ceil(wait))
        return problem(
            429,
            "rate_limited",
            f"too many requests for this {who}; retry in {seconds} s",
            {"Retry-After": str(seconds)},
            {"limit": who},
        )

    def opens(self, scope: Scope, candidate_id: str) -> bool:
        """Whether the request carries a valid token for this candidate (a beacon's token is in
        its body, unread here: tab-close beacons count against the IP limit only)."""
        token = tokens.bearer(scope.get("headers", []))
        return token is not None and tokens.opens(token, candidate_id, self.secret)


class RateLimit:
    """ASGI middleware: the per-candidate and per-IP limits of the candidate API."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limits.enabled or scope.get(COUNTED):
            await self.app(scope, receive, send)
            return
        candidate_id = candidate_call(scope["method"], scope["path"])
        if candidate_id is None:
            await self.app(scope, receive, send)
            return
        limits = self.limits
        refused = limits.take(
            scope,
            candidate_id,
            token_opens=limits.per_candidate is not None and limits.opens(scope, candidate_id),
        )
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)
