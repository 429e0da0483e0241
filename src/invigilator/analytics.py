"""How candidates fare: the one analytics service behind the CLI report, the API and the dashboard.

Presentation-agnostic: every function takes the psycopg pool (a `SessionStore`'s `.pool` does)
and returns plain dicts typed as `TypedDict`s, so `json.dumps` and FastAPI take them as they are
(timestamps are ISO 8601 strings in UTC, dates `YYYY-MM-DD`). Every number is computed in SQL
(`sql/analytics.sql`), one statement per call; docs/analytics.md defines each metric.

- `summary(pool, since, until, policy)`: the report for the sessions that started in the window
  [since, until) (half-open; default: the last 30 days up to the database's `now()`).
- `live(pool, policy)`: the sessions running right now, with time left and silence.
- `summary_rows(summary)`: the summary flattened to (metric, dimension, value) rows, for CSV.
- `parse_bound(text, tz)`: a window bound from a date or a timestamp, as a CLI or a query
  string gives it.

Lazy expiry: a row still stored `active` whose end is due is counted the way the sweeper will
end it (status, method, completed_at), is reported in `overdue_unswept`, and never shows as live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg_pool import AsyncConnectionPool

# pydantic (the API's response models) reads these only from typing_extensions before 3.12
from typing_extensions import TypedDict

from invigilator import sql
from invigilator.config import Settings
from invigilator.db.connector import autocommit, translate_errors
from invigilator.domain import InvalidInput, Policy

Q = sql.analytics_queries()

#: The window when none is given: this long up to now.
DEFAULT_SPAN = timedelta(days=30)
#: The longest window: the daily trend has a row per day.
MAX_SPAN = timedelta(days=3660)
#: Width of the minute histograms (abandonment by minute, duration histogram).
DEFAULT_MINUTE_BUCKET = 5
MAX_LIVE_LIMIT = 10_000
#: work_mem of the summary's read-only transaction: the narrow rows of a million sessions
#: (about 100 MB) stay in memory instead of spilling to disk between the passes over them.
#: An upper bound: a smaller window uses what it needs.
SUMMARY_WORK_MEM = "256MB"
#: statement_timeout of the summary's read-only transaction, when the connection's is shorter
#: (never shorter than the operator's, never a limit where there was none): the service's 10 s
#: guards its requests, and a month of a million sessions with nothing rolled up (Citus, or
#: just after the upgrade to migration 0014) takes the summary over 10 s.
SUMMARY_STATEMENT_TIMEOUT_MS = 120_000
#: The sessions of a rolled-up row started within this long (test_session_rollup_bucket).
ROLLUP_BUCKET = timedelta(minutes=15)

# --- the shapes returned (JSON-ready dicts) -----------------------------------------------


class Window(TypedDict):
    since: str  # ISO 8601, inclusive
    until: str  # ISO 8601, exclusive
    timezone: str  # the zone of by_hour, by_weekday and daily


class MethodCount(TypedDict):
    status: str  # the status this method leads to
    count: int
    rate: float | None  # count / ended sessions; null when none ended


class DurationStats(TypedDict):
    count: int  # completed sessions
    mean: float | None  # seconds
    median: float | None
    p90: float | None


class ShareStats(TypedDict):
    mean: float | None  # duration / allowed time (set duration + extensions), 0..1
    median: float | None
    p90: float | None


class MinuteBucket(TypedDict):
    from_minute: int  # inclusive
    to_minute: int  # exclusive
    count: int


class SectionStep(TypedDict):
    sections: int  # sections completed
    reached: int  # sessions with at least this many sections completed
    count: int  # sessions that gave up with exactly this many
    rate: float | None  # count / reached: the drop-off at this step


class HourCount(TypedDict):
    hour: int  # 0..23 in the window's timezone
    count: int


class WeekdayCount(TypedDict):
    weekday: int  # ISO: 1 = Monday … 7 = Sunday
    name: str
    count: int


class FocusLost(TypedDict):
    count: int  # sessions that gave up after a focus_lost or tab_hidden event
    share: float | None  # of the sessions that gave up


class Abandonment(TypedDict):
    total: int  # sessions that gave up: heartbeat_timeout, tab_close, admin_terminated
    share_of_ended: float | None
    by_reason: dict[str, int]  # heartbeat_timeout, tab_close, admin_terminated
    by_sections_completed: list[SectionStep]
    by_minute: list[MinuteBucket]
    by_hour: list[HourCount]
    by_weekday: list[WeekdayCount]
    focus_lost_before: FocusLost


class Flagged(TypedDict):
    total: int  # sessions with at least one incident
    share: float | None  # of the sessions in the window
    incidents: int  # incidents recorded on them
    by_severity: dict[str, int]  # low, medium, high: sessions by their most serious incident


class Day(TypedDict):
    date: str  # YYYY-MM-DD in the window's timezone; sessions counted on the day they started
    started: int
    completed: int
    abandoned: int
    active: int


class MultipleDevices(TypedDict):
    sessions: int  # sessions whose pages came from more than one device or address
    share: float | None  # of all sessions in the window
    devices: int  # more than one device (user agent)
    addresses: int  # more than one client address


class Paused(TypedDict):
    sessions: int  # sessions staff paused at least once
    now: int  # of them, paused right now


class Reopened(TypedDict):
    sessions: int  # sessions reopened at least once
    reopenings: int  # how many reopenings in all


class Summary(TypedDict):
    window: Window
    generated_at: str
    total: int
    active: int
    completed: int
    abandoned: int
    overdue_unswept: int  # stored active but due: counted as they will end
    completion_rate: float | None  # completed / (completed + abandoned)
    by_method: dict[str, MethodCount]
    paused: Paused
    reopened: Reopened
    duration_seconds: DurationStats
    duration_share: ShareStats
    duration_histogram: list[MinuteBucket]
    abandonment: Abandonment
    flagged: Flagged
    daily: list[Day]
    multiple_devices: MultipleDevices


class LiveSession(TypedDict):
    candidate_id: str
    test_start_time: str
    deadline: str
    last_heartbeat: str | None  # null: no heartbeat yet (silence counts from the start)
    remaining_seconds: int
    seconds_since_heartbeat: int
    silent: bool
    sections_completed: int
    tab_closed: bool  # a tab-close beacon arrived; the tab-close grace is running
    devices: int  # distinct devices (user agents) among the session's page claims
    addresses: int  # distinct client addresses among them
    multiple_devices: bool  # more than one of either: worth a look
    paused: bool  # staff paused it (or it was reopened and waits for its page)
    incidents: int  # incidents recorded on the session
    flag: str | None  # the most serious one's severity (low, medium, high); null: none


class Live(TypedDict):
    server_now: str
    silent_after_seconds: float
    count: int  # all running sessions (`sessions` holds at most `limit` of them)
    silent: int
    flagged: int  # running sessions with at least one incident
    sessions: list[LiveSession]


# --- the service ---------------------------------------------------------------------------


def silent_after(policy: Policy) -> timedelta:
    """A running session is flagged silent after this long without a heartbeat.

    Two heartbeat intervals (30 s by default): one late beat is network jitter, two missed
    ones mean the browser is gone or asleep. It is also the gap after which a heartbeat logs
    `resumed` (`Policy.resume_gap`), so "silent" and "resumed" agree. Never more than the
    abandon threshold, where the session stops being live at all.
    """
    return min(policy.resume_gap, policy.abandon_after)


def check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {tz!r} (use an IANA name such as UTC)") from None
    return tz


def parse_bound(text: str, tz: str = "UTC") -> datetime:
    """A window bound from `YYYY-MM-DD` (midnight) or an ISO 8601 timestamp; a bound without
    an offset is read in `tz`."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 timestamp"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(check_timezone(tz)))
    return value


async def _window(
    conn: psycopg.AsyncConnection[Any],
    since: datetime | None,
    until: datetime | None,
    span: timedelta = DEFAULT_SPAN,
) -> tuple[datetime, datetime]:
    for bound in (since, until):
        if bound is not None and bound.tzinfo is None:
            raise InvalidInput("window bounds need a time zone offset")
    cur = await conn.execute(Q["window"], {"since": since, "until": until, "default_span": span})
    row = await cur.fetchone()
    assert row is not None
    resolved: tuple[datetime, datetime] = (row[0], row[1])
    if resolved[0] > resolved[1]:
        raise InvalidInput(
            "the window's since must not be after its until",
            since=resolved[0].isoformat(),
            until=resolved[1].isoformat(),
        )
    if resolved[1] - resolved[0] > MAX_SPAN:
        raise InvalidInput(f"the window may span at most {MAX_SPAN.days} days (one row a day)")
    return resolved


async def summary(
    pool: AsyncConnectionPool[Any],
    since: datetime | None = None,
    until: datetime | None = None,
    policy: Policy | None = None,
    *,
    tz: str = "UTC",
    minute_bucket: int = DEFAULT_MINUTE_BUCKET,
) -> Summary:
    """Every metric for the sessions that started in [since, until) (default: the last 30
    days up to now). `policy` decides which stored-active rows are in truth over (lazy
    expiry); `tz` is the zone of the hour, weekday and daily breakdowns; `minute_bucket` the
    width of the minute histograms. One read-only transaction, one statement for the metrics.
    Raises InvalidInput for a reversed window or one over MAX_SPAN, an unknown zone or a bad
    bucket width."""
    policy = policy or Settings().policy()
    check_timezone(tz)
    if not 1 <= minute_bucket <= 1440:
        raise InvalidInput("minute_bucket must be between 1 and 1440")
    # One snapshot: the ranges read one by one and the rolled-up rest must be of one moment.
    async with _connection(pool, snapshot=True) as conn:
        # The per-session rows of a large window are read several times: keep them in memory.
        await conn.execute(f"SET LOCAL work_mem = '{SUMMARY_WORK_MEM}'")
        await conn.execute(Q["longer_timeout"], {"ms": SUMMARY_STATEMENT_TIMEOUT_MS})
        since, until = await _window(conn, since, until)
        params: dict[str, Any] = {
            **policy.sql_params(),
            "since": since,
            "until": until,
            "tz": tz,
            "bucket": minute_bucket,
        }
        cur = await conn.execute(Q["summary_parts"], params)
        statement = summary_statement([(lo, hi) for lo, hi in await cur.fetchall()], params)
        cur = await conn.execute(statement, params, prepare=False)
        row = await cur.fetchone()
    assert row is not None
    return cast(Summary, row[0])


@dataclass(frozen=True)
class RolledUp:
    """What one `roll_up` call did: quarter hours written, and how many of them are ready
    (every session ended); the others are tried again later."""

    buckets: int
    ready: int


async def roll_up(
    pool: AsyncConnectionPool[Any], policy: Policy | None = None, *, limit: int = 200
) -> RolledUp:
    """Roll up to `limit` quarter hours of sessions for the summary (migration 0014): the
    next ones not yet rolled up that ended an hour ago or more, then the stale ones. One
    transaction per quarter hour, holding its lock (writers of its sessions wait) while it
    reads them; at one a writer holds now it stops, for the next call. The sweeper calls this
    on every pass; never on a distributed database (the caller checks), where the summary
    reads the sessions on the shards."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    policy = policy or Settings().policy()
    rolled = ready = 0
    # autocommit: each `conn.transaction()` below is a transaction of its own (not a savepoint
    # of one long transaction holding every quarter hour's lock until the last).
    async with autocommit(pool) as conn:
        cur = await conn.execute(Q["rollup_due"], {"limit": limit})
        buckets = [row[0] for row in await cur.fetchall()]
        for bucket in buckets:
            async with conn.transaction():
                # UTC: a quarter hour is one cell, and the stored times render alike.
                await conn.execute("SET LOCAL TimeZone TO 'UTC'")
                cur = await conn.execute(Q["rollup_lock"], {"bucket": bucket})
                locked = await cur.fetchone()
                if not (locked and locked[0]):
                    # A writer is changing its sessions. Stop here, for the next pass:
                    # the new quarter hours are rolled up in order, none left behind.
                    break
                params = {**policy.sql_params(), "bucket": bucket, "tz": "UTC"}
                statement = with_raw_parts(
                    Q["rollup_build"], [(bucket, bucket + ROLLUP_BUCKET)], params
                )
                # Never prepared: a plan for this quarter hour's bounds, not a generic one.
                cur = await conn.execute(statement, params, prepare=False)
                row = await cur.fetchone()
            rolled += 1
            ready += bool(row and row[0])
    return RolledUp(rolled, ready)


#: At most this many ranges of sessions read one by one per summary (the holes between them
#: then merged, their rolled-up rows left out): one statement text per count.
MAX_RAW_PARTS = 8
_RAW = "(/*raw*/ false)"


def _merged(parts: list[tuple[datetime, datetime]], most: int) -> list[tuple[datetime, datetime]]:
    """`parts` (sorted, apart) as at most `most` ranges: the closest neighbours joined first."""
    parts = list(parts)
    while len(parts) > most:
        i = min(range(len(parts) - 1), key=lambda k: parts[k + 1][0] - parts[k][1])
        parts[i : i + 2] = [(parts[i][0], parts[i + 1][1])]
    return parts


def summary_statement(parts: list[tuple[datetime, datetime]], params: dict[str, Any]) -> str:
    """The summary's statement for the ranges `summary_parts` returned (merged to at most
    MAX_RAW_PARTS), with their parameters added to `params`."""
    parts = _merged(parts, MAX_RAW_PARTS)
    params["part_lo"] = [lo for lo, _ in parts]
    params["part_hi"] = [hi for _, hi in parts]
    return with_raw_parts(Q["summary"], parts, params)


def with_raw_parts(
    statement: str, parts: list[tuple[datetime, datetime]], params: dict[str, Any]
) -> str:
    """`statement` reading the sessions that started in `parts`, as constants the planner sees
    (their bounds added to `params` as lo0, hi0, …; none: no session is read)."""
    if not parts:
        return statement
    for i, (lo, hi) in enumerate(parts):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
    ranges = " OR ".join(
        f"t.test_start_time >= %(lo{i})s::timestamptz"
        f" AND t.test_start_time < %(hi{i})s::timestamptz"
        for i in range(len(parts))
    )
    return statement.replace(_RAW, f"({ranges})")


class RecentSummaries:
    """The summaries computed in the last `ttl` seconds, by window: what the dashboard's charts
    are drawn from. The dashboard reads the summary and then asks for its six charts with the
    same window, and each chart computed the summary again: seven passes over the window's
    sessions per load, seconds each at a million sessions. A chart asked for while its
    summary is being computed waits for that computation instead of starting its own. Errors
    are not kept (the next ask computes again), and at most `size` windows are."""

    def __init__(self, ttl: float = 15.0, size: int = 32) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[float, asyncio.Future[Summary]]] = OrderedDict()

    def put(self, key: Hashable, summary: Summary) -> None:
        """A summary just computed (the summary route's, which is never read from here)."""
        done: asyncio.Future[Summary] = asyncio.get_running_loop().create_future()
        done.set_result(summary)
        self._keep(key, done)

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Summary]]) -> Summary:
        """The summary of `key` if one was computed (or is being computed) in the last `ttl`
        seconds, else `compute()`'s."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            task = asyncio.ensure_future(compute())
            self._keep(key, task)
            task.add_done_callback(lambda t: self._forget_failure(key, t))
            entry = self._entries[key]
        # shielded: a client that goes away does not cancel the others' computation
        return await asyncio.shield(entry[1])

    def _keep(self, key: Hashable, task: asyncio.Future[Summary]) -> None:
        self._entries[key] = (time.monotonic() + self.ttl, task)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def _forget_failure(self, key: Hashable, task: asyncio.Future[Summary]) -> None:
        if (task.cancelled() or task.exception() is not None) and (
            self._entries.get(key, (0.0, None))[1] is task
        ):
            del self._entries[key]


async def live(
    pool: AsyncConnectionPool[Any], policy: Policy | None = None, *, limit: int = 500
) -> Live:
    """The sessions running now: stored active and not yet due (so never a row whose deadline
    or abandon threshold has passed, swept or not). The silent first, then the longest silent;
    `sessions` holds at most `limit`, `count` and `silent` count them all."""
    policy = policy or Settings().policy()
    if not 1 <= limit <= MAX_LIVE_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIVE_LIMIT}")
    params = {**policy.sql_params(), "silent_after": silent_after(policy), "limit": limit}
    async with _connection(pool) as conn:
        cur = await conn.execute(Q["live"], params)
        row = await cur.fetchone()
    assert row is not None
    return cast(Live, row[0])


@contextlib.asynccontextmanager
async def _connection(
    pool: AsyncConnectionPool[Any], *, snapshot: bool = False
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection in one read-only transaction whose TimeZone is UTC (so every
    timestamp the SQL renders into JSON is in UTC); database errors become domain errors.
    `snapshot`: all its statements see one snapshot (REPEATABLE READ)."""
    with translate_errors():
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SET TRANSACTION READ ONLY, ISOLATION LEVEL "
                + ("REPEATABLE READ" if snapshot else "READ COMMITTED")
            )
            await conn.execute("SET LOCAL TimeZone TO 'UTC'")
            yield conn


# --- flat form -----------------------------------------------------------------------------

CSV_HEADER = ("metric", "dimension", "value")


def summary_rows(report: Summary) -> Iterator[tuple[str, str, Any]]:
    """The summary as (metric, dimension, value) rows: one per number, the dimension empty
    for scalars (a null value stays None). The CSV export writes exactly these rows."""
    w = report["window"]
    yield "window.since", "", w["since"]
    yield "window.until", "", w["until"]
    yield "window.timezone", "", w["timezone"]
    yield "generated_at", "", report["generated_at"]
    for key in ("total", "active", "completed", "abandoned", "overdue_unswept"):
        yield key, "", report[key]
    yield "completion_rate", "", report["completion_rate"]
    for method, counts in report["by_method"].items():
        yield "by_method.count", method, counts["count"]
        yield "by_method.rate", method, counts["rate"]
    yield "paused.sessions", "", report["paused"]["sessions"]
    yield "paused.now", "", report["paused"]["now"]
    yield "reopened.sessions", "", report["reopened"]["sessions"]
    yield "reopened.reopenings", "", report["reopened"]["reopenings"]
    durations = report["duration_seconds"]
    yield "duration_seconds.count", "", durations["count"]
    for stat in ("mean", "median", "p90"):
        yield f"duration_seconds.{stat}", "", durations[stat]
    for stat in ("mean", "median", "p90"):
        yield f"duration_share.{stat}", "", report["duration_share"][stat]  # type: ignore[literal-required]
    for bucket in report["duration_histogram"]:
        yield "duration_histogram.count", _span(bucket), bucket["count"]
    ab = report["abandonment"]
    yield "abandonment.total", "", ab["total"]
    yield "abandonment.share_of_ended", "", ab["share_of_ended"]
    for reason, n in ab["by_reason"].items():
        yield "abandonment.by_reason", reason, n
    for step in ab["by_sections_completed"]:
        dim = str(step["sections"])
        yield "abandonment.by_sections_completed.reached", dim, step["reached"]
        yield "abandonment.by_sections_completed.count", dim, step["count"]
        yield "abandonment.by_sections_completed.rate", dim, step["rate"]
    for bucket in ab["by_minute"]:
        yield "abandonment.by_minute", _span(bucket), bucket["count"]
    for hour in ab["by_hour"]:
        yield "abandonment.by_hour", str(hour["hour"]), hour["count"]
    for day in ab["by_weekday"]:
        yield "abandonment.by_weekday", day["name"], day["count"]
    focus = ab["focus_lost_before"]
    yield "abandonment.focus_lost_before.count", "", focus["count"]
    yield "abandonment.focus_lost_before.share", "", focus["share"]
    flagged = report["flagged"]
    yield "flagged.total", "", flagged["total"]
    yield "flagged.share", "", flagged["share"]
    yield "flagged.incidents", "", flagged["incidents"]
    for severity, n in flagged["by_severity"].items():
        yield "flagged.by_severity", severity, n
    for row in report["daily"]:
        for key in ("started", "completed", "abandoned", "active"):
            yield f"daily.{key}", row["date"], row[key]  # type: ignore[literal-required]
    spread = report["multiple_devices"]
    yield "multiple_devices.sessions", "", spread["sessions"]
    yield "multiple_devices.share", "", spread["share"]
    yield "multiple_devices.devices", "", spread["devices"]
    yield "multiple_devices.addresses", "", spread["addresses"]


def _span(bucket: MinuteBucket) -> str:
    return f"{bucket['from_minute']}-{bucket['to_minute']}"
