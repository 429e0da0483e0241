"""`invigilator report` (how candidates fare: tables, JSON, CSV, charts) and
`invigilator demo-data` (realistic synthetic sessions for demos and benchmarks).

The numbers come from `invigilator.analytics`, the same module the API and the dashboard use;
this module only presents them. docs/analytics.md defines every metric.
"""

from __future__ import annotations

import asyncio
import csv
import enum
import json
import math
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from invigilator import analytics, charts
from invigilator.analytics import Live, Summary
from invigilator.cli.app import app, database, err, fail, out
from invigilator.cli.options import DatabaseUrl
from invigilator.config import Settings
from invigilator.db import connector
from invigilator.db.selection import Database
from invigilator.domain import InvigilatorError, Policy

# --- invigilator report ----------------------------------------------------------------------


class ReportFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Window start, inclusive: YYYY-MM-DD or an ISO timestamp (default: 30 days "
        "before --until). Sessions count by their start time.",
        show_default=False,
    ),
]
Until = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="Window end, exclusive: YYYY-MM-DD (midnight, so that day is not included) or an "
        "ISO timestamp (default: now).",
        show_default=False,
    ),
]


@app.command("report")
def report(
    since: Since = None,
    until: Until = None,
    output_format: Annotated[
        ReportFormat,
        typer.Option("--format", help="table (readable), json (the summary) or csv (flat rows)."),
    ] = ReportFormat.TABLE,
    charts: Annotated[
        Path | None,
        typer.Option(
            "--charts",
            help="Also write the charts into this directory, as PNG and SVG.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    tz: Annotated[
        str, typer.Option("--tz", help="Time zone of dates without an offset, hours and days.")
    ] = "UTC",
    bucket: Annotated[
        int, typer.Option("--bucket-minutes", help="Width of the minute histograms.", min=1)
    ] = analytics.DEFAULT_MINUTE_BUCKET,
    database_url: DatabaseUrl = None,
) -> None:
    """How candidates fare: completion, durations, abandonment and the daily trend, for the
    sessions that started in [--since, --until)."""
    db = database(database_url)
    settings = Settings()
    try:
        start = analytics.parse_bound(since, tz) if since else None
        end = analytics.parse_bound(until, tz) if until else None
        summary, live = asyncio.run(
            _collect(
                db,
                settings,
                start,
                end,
                tz=tz,
                bucket=bucket,
                with_live=output_format is ReportFormat.TABLE,
            )
        )
    except InvigilatorError as exc:
        raise fail(exc.message, db) from None
    except psycopg.Error as exc:
        raise fail(str(exc), db) from None

    if output_format is ReportFormat.JSON:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    elif output_format is ReportFormat.CSV:
        write_csv(summary, sys.stdout)
    else:
        out.print(render_summary(summary, live))
    if charts is not None:
        try:
            written = write_charts(summary, charts)
        except OSError as exc:
            raise fail(f"cannot write the charts into {charts}: {exc.strerror or exc}") from None
        for path in written:
            err.print(f"[dim]chart: {path}[/dim]", highlight=False)


async def _collect(
    db: Database,
    settings: Settings,
    since: datetime | None,
    until: datetime | None,
    *,
    tz: str,
    bucket: int,
    with_live: bool,
) -> tuple[Summary, Live | None]:
    size = 2 if with_live else 1
    pool = connector.pool_for(db.url, settings, min_size=size, max_size=size)
    await pool.open(wait=True, timeout=settings.db_connect_timeout_seconds)
    try:
        policy = settings.policy()
        # The live view runs beside the summary, on its own connection.
        summary_task = asyncio.ensure_future(
            analytics.summary(pool, since, until, policy, tz=tz, minute_bucket=bucket)
        )
        try:
            live = await analytics.live(pool, policy, limit=10) if with_live else None
        finally:
            summary = await summary_task
        return summary, live
    finally:
        await pool.close()


def write_csv(summary: Summary, stream: Any) -> None:
    """The flat form: a `metric,dimension,value` header, then `analytics.summary_rows`."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(analytics.CSV_HEADER)
    for metric, dimension, value in analytics.summary_rows(summary):
        writer.writerow((metric, dimension, "" if value is None else value))


# --- tables ------------------------------------------------------------------------------------


def _bar(count: int, top: int, width: int = 30) -> Text:
    cells = 0 if top == 0 else max(1 if count else 0, round(width * count / top))
    return Text("█" * cells, style="cyan")


def _stamp(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S %Z")


def render_summary(s: Summary, live: Live | None = None) -> RenderableType:
    """The report as rich tables, in reading order."""
    parts: list[RenderableType] = []
    w = s["window"]
    parts.append(
        Text.assemble(
            ("Sessions started from ", "bold"),
            (_stamp(w["since"]), "bold cyan"),
            (" up to (not including) ", "bold"),
            (_stamp(w["until"]), "bold cyan"),
            (f"  · hours and days in {w['timezone']}", "dim"),
        )
    )

    overview = Table(title="Overview", show_header=False, title_justify="left")
    overview.add_column("metric")
    overview.add_column("value", justify="right")
    overview.add_row("sessions", f"{s['total']:,}")
    overview.add_row("  active", f"{s['active']:,}")
    overview.add_row("  completed", f"{s['completed']:,}")
    overview.add_row("  abandoned", f"{s['abandoned']:,}")
    overview.add_row("completion rate (completed / ended)", charts.pct(s["completion_rate"]))
    d = s["duration_seconds"]
    overview.add_row("duration of completed: mean", charts.clock(d["mean"]))
    overview.add_row("  median", charts.clock(d["median"]))
    overview.add_row("  p90", charts.clock(d["p90"]))
    share = s["duration_share"]
    overview.add_row("share of allowed time used: mean", charts.pct(share["mean"]))
    overview.add_row("  median", charts.pct(share["median"]))
    if s["overdue_unswept"]:
        overview.add_row(
            "[dim]ended but not yet swept (counted as ended)[/dim]", f"{s['overdue_unswept']:,}"
        )
    if live is not None:
        overview.add_row("running right now", f"{live['count']:,}")
        overview.add_row(
            f"  silent (no heartbeat for {live['silent_after_seconds']:g} s)", f"{live['silent']:,}"
        )
    parts.append(overview)

    methods = Table(title="How sessions ended", title_justify="left")
    methods.add_column("method")
    methods.add_column("status")
    methods.add_column("sessions", justify="right")
    methods.add_column("share of ended", justify="right")
    for name, m in s["by_method"].items():
        style = "green" if m["status"] == "completed" else "red"
        methods.add_row(
            name, f"[{style}]{m['status']}[/{style}]", f"{m['count']:,}", charts.pct(m["rate"])
        )
    parts.append(methods)

    ab = s["abandonment"]
    focus = ab["focus_lost_before"]
    gave_up = Table(
        title=f"Gave up: {ab['total']:,} ({charts.pct(ab['share_of_ended'])} of ended)",
        title_justify="left",
    )
    gave_up.add_column("reason")
    gave_up.add_column("sessions", justify="right")
    for reason, n in ab["by_reason"].items():
        gave_up.add_row(reason, f"{n:,}")
    gave_up.add_row(
        "lost focus or hid the tab before leaving",
        f"{focus['count']:,} ({charts.pct(focus['share'])})",
    )
    parts.append(gave_up)

    funnel = Table(title="Funnel: sections completed", title_justify="left")
    for col in ("sections", "reached", "gave up there", "drop-off"):
        funnel.add_column(col, justify="right")
    for step in ab["by_sections_completed"]:
        funnel.add_row(
            str(step["sections"]),
            f"{step['reached']:,}",
            f"{step['count']:,}",
            charts.pct(step["rate"]),
        )
    parts.append(funnel)

    parts.append(
        _histogram(
            "Gave up: minutes into the test",
            "minutes",
            [(f"{b['from_minute']}–{b['to_minute']}", b["count"]) for b in ab["by_minute"]],
        )
    )
    parts.append(
        _histogram(
            f"Gave up: hour of day ({w['timezone']})",
            "hour",
            [(f"{h['hour']:02d}", h["count"]) for h in ab["by_hour"]],
        )
    )
    parts.append(
        _histogram("Gave up: weekday", "day", [(x["name"], x["count"]) for x in ab["by_weekday"]])
    )
    parts.append(
        _histogram(
            "Completed: duration in minutes",
            "minutes",
            [(f"{b['from_minute']}–{b['to_minute']}", b["count"]) for b in s["duration_histogram"]],
        )
    )

    daily = Table(title="Daily (sessions by the day they started)", title_justify="left")
    for col in ("date", "started", "completed", "abandoned", "active"):
        daily.add_column(col, justify="right")
    for day in s["daily"]:
        daily.add_row(
            day["date"],
            f"{day['started']:,}",
            f"{day['completed']:,}",
            f"{day['abandoned']:,}",
            f"{day['active']:,}",
        )
    parts.append(daily)
    return Group(*parts)


def _histogram(title: str, label: str, rows: Sequence[tuple[str, int]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(label, justify="right")
    table.add_column("count", justify="right")
    table.add_column("")
    top = max((n for _, n in rows), default=0)
    for name, n in rows:
        table.add_row(name, f"{n:,}", _bar(n, top))
    if not rows:
        table.add_row("–", "0", "")
    return table


# --- charts ------------------------------------------------------------------------------------


def write_charts(summary: Summary, directory: Path) -> list[Path]:
    """The report's charts (invigilator.charts) as PNG and SVG files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in charts.NAMES:
        for ext in ("png", "svg"):
            path = directory / f"{name}.{ext}"
            path.write_bytes(charts.render(summary, name, ext))
            written.append(path)
    return written


# --- invigilator demo-data -------------------------------------------------------------------


@app.command("demo-data")
def demo_data(
    candidates: Annotated[
        int, typer.Option("--candidates", help="How many candidates (one session each).", min=1)
    ],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random generator.")] = 1,
    days: Annotated[
        int, typer.Option("--days", help="Spread the sessions over this many past days.", min=1)
    ] = 30,
    database_url: DatabaseUrl = None,
) -> None:
    """Fill the database with realistic synthetic candidates, sessions and events
    (distributions in docs/analytics.md); about 2 % of them are running right now."""
    db = database(database_url)
    settings = Settings()
    started = time.perf_counter()
    try:
        totals = load_demo_data(
            db.url, candidates, seed=seed, days=days, policy=settings.policy(), progress=True
        )
    except psycopg.errors.UndefinedTable:
        raise fail("the schema is missing: run `invigilator db upgrade` first", db) from None
    except psycopg.errors.UniqueViolation:
        raise fail(
            f"demo data for seed {seed} is already in this database: pick another --seed", db
        ) from None
    except psycopg.Error as exc:
        raise fail(str(exc), db) from None
    elapsed = time.perf_counter() - started
    out.print(
        f"demo data: {totals.candidates:,} candidates, {totals.sessions:,} sessions "
        f"({totals.active:,} running now), {totals.events:,} events in {elapsed:.1f} s"
    )


@dataclass
class DemoBatch:
    """Rows for COPY: candidates, sessions and events of a slice of the candidates."""

    candidates: list[tuple[str]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[str, str, datetime, str, str]] = field(default_factory=list)
    active: list[str] = field(default_factory=list)  # the ids of the sessions running now


@dataclass
class DemoTotals:
    candidates: int = 0
    sessions: int = 0
    events: int = 0
    active: int = 0


SESSION_COLUMNS = (
    "candidate_id, test_start_time, test_duration_minutes, extra_minutes, last_heartbeat, "
    "last_activity, status, completion_method, completed_at, sections_completed, "
    "planned_sections, pending_answers, answer_seq, created_at, updated_at, deadline"
)


def load_demo_data(
    url: str,
    candidates: int,
    *,
    seed: int = 1,
    days: int = 30,
    policy: Policy | None = None,
    progress: bool = False,
    chunk: int = 5000,
) -> DemoTotals:
    """Generate and COPY `candidates` candidates with one session each, in one transaction
    (all or nothing), then ANALYZE. Times are relative to the database clock.

    A role that may (a superuser, such as the embedded database's) loads with triggers and
    foreign-key checks off for the transaction (`session_replication_role = replica`, what
    pg_restore --disable-triggers does): the rows are complete and consistent by construction
    (parents first, `deadline` computed), and the checks are most of the load's cost. Any
    other role loads through them as usual.
    """
    totals = DemoTotals()
    active: list[str] = []
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        now: datetime = row[0]
        try:
            with conn.transaction():  # a savepoint: a refusal leaves the load going
                conn.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            pass
        progress_bar = Progress(
            TextColumn("[bold]demo data[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not progress,
        )
        with progress_bar, conn.cursor() as cur:
            task = progress_bar.add_task("candidates", total=candidates)
            for batch in generate_demo(
                candidates,
                seed=seed,
                days=days,
                now=now,
                policy=policy or Settings().policy(),
                chunk=chunk,
            ):
                with cur.copy("COPY candidate (candidate_id) FROM STDIN") as copy:
                    for crow in batch.candidates:
                        copy.write_row(crow)
                with cur.copy(f"COPY test_session ({SESSION_COLUMNS}) FROM STDIN") as copy:
                    for srow in batch.sessions:
                        copy.write_row(srow)
                with cur.copy(
                    "COPY test_session_event (candidate_id, type, at, actor, detail) FROM STDIN"
                ) as copy:
                    for erow in batch.events:
                        copy.write_row(erow)
                totals.candidates += len(batch.candidates)
                totals.sessions += len(batch.sessions)
                totals.events += len(batch.events)
                active.extend(batch.active)
                progress_bar.advance(task, len(batch.candidates))
            # The running sessions were made relative to the transaction's start; a large load
            # takes minutes, so bring their heartbeats up to the moment of the commit.
            cur.execute(
                "UPDATE test_session"
                "   SET last_heartbeat = last_heartbeat + (clock_timestamp() - now()),"
                "       last_activity = last_activity + (clock_timestamp() - now())"
                " WHERE status = 'active' AND candidate_id::text = ANY(%s::text[])",
                (active,),
            )
            totals.active = len(active)
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE candidate, test_session, test_session_event")
    return totals


# The distributions of demo-data (docs/analytics.md repeats them):
#: test length in minutes, and its weight
DEMO_DURATIONS = ((30, 0.15), (45, 0.20), (60, 0.40), (90, 0.15), (120, 0.10))
#: sections a test of that length has (the first N of DEMO_SECTIONS)
DEMO_SECTION_COUNT = {30: 3, 45: 3, 60: 4, 90: 5, 120: 6}
DEMO_SECTIONS = ("reading", "listening", "grammar", "writing", "reasoning", "numeracy")
#: relative volume of sessions per weekday, Monday first
DEMO_WEEKDAY_WEIGHT = (1.0, 1.0, 1.0, 1.0, 0.9, 0.45, 0.35)
#: start hour (UTC) as a mixture of normals: (mean hour, sd hours, weight)
DEMO_START_HOUR = ((10.5, 1.5, 0.45), (15.0, 2.0, 0.40), (20.5, 1.5, 0.15))
#: share of candidates whose session is running right now
DEMO_ACTIVE_SHARE = 0.02

# Precomputed JSON texts, by number of sections (the generator's hot loop only picks them).
_SECTIONS_JSON = [json.dumps(list(DEMO_SECTIONS[:n])) for n in range(len(DEMO_SECTIONS) + 1)]
_ANSWER_KEYS = [
    [f'"{sec}-q{q}": ' for sec in DEMO_SECTIONS[:n] for q in (1, 2, 3)]
    for n in range(len(DEMO_SECTIONS) + 1)
]
_ANSWER_SEQ_JSON = [
    json.dumps({f"{sec}-q{q}": k + 1 for k, sec in enumerate(DEMO_SECTIONS[:n]) for q in (1, 2, 3)})
    for n in range(len(DEMO_SECTIONS) + 1)
]
_SAVED_DETAIL = [
    json.dumps({"questions": [f"{sec}-q{q}" for q in (1, 2, 3)], "seq": k + 1})
    for k, sec in enumerate(DEMO_SECTIONS)
]
_SECTION_DETAIL = [
    json.dumps({"section": sec, "count": k + 1}) for k, sec in enumerate(DEMO_SECTIONS)
]
_END_ACTOR = {"manual": "candidate", "admin": "staff", "admin_terminated": "staff"}
_FOCUS_KINDS = (("tab_hidden", "tab_visible"), ("focus_lost", "focus_regained"))
_GAVE_UP = frozenset({"heartbeat_timeout", "tab_close", "admin_terminated"})


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _cumulative(weights: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def generate_demo(
    candidates: int,
    *,
    seed: int,
    days: int,
    now: datetime,
    policy: Policy,
    chunk: int = 5000,
) -> Iterator[DemoBatch]:
    """Synthetic sessions and their events, deterministic for a seed and a `now`.

    Distributions (also in docs/analytics.md):

    - start: a day among the last `days` (weekday weights Mon–Thu 1.0, Fri 0.9, Sat 0.45,
      Sun 0.35), an hour from a mixture of normals around 10:30 (45 %), 15:00 (40 %) and
      20:30 UTC (15 %); a start too recent for the session to have ended is drawn again.
    - test length: 30/45/60/90/120 min (15/20/40/15/10 %) with 3/3/4/5/6 planned sections;
      3 % get a staff extension of 10, 15 or 30 minutes.
    - outcome: the candidate gives up with probability 10 %, +5 % for tests of 90 minutes or
      more, +6 % for starts between 21:00 and 06:00 UTC; giving up is a heartbeat timeout
      (70 %), a tab close (22 %) or staff termination (8 %), at a point of the allowed time
      that is uniform over the first 10 % (35 % of them) or Beta(2, 2.2) otherwise. The others
      submit (84 %; at a share of the allowed time ~ Beta(6, 2.5)), run out of time (14 %)
      or are submitted by staff (2 %).
    - sections: the share of time used times the planned sections for those who gave up;
      all (92 %) or all but one for a submission; all but 0/1/2 (30/50/20 %) on timeout.
    - events: started; answers_saved then section_completed per section, evenly spaced;
      focus losses ~ Poisson(0.6) for finishers and Poisson(1.8) for those who give up, half
      as focus_lost/focus_regained and half as tab_hidden/tab_visible, back after ~Exp(25 s);
      resumed for 6 %; time_extended; tab_closed; and the completed/abandoned event.
    - running now (2 %, at least one): started 2 minutes to the whole test ago, heartbeat in
      the last 14 s (88 %) or 35–200 s ago (12 %, flagged silent by the live view).

    Rows come in order of start time with increasing candidate ids (uuid-shaped, so a uuid
    key works too): the indexes grow at their right edge, as they do in real life, which
    keeps the load fast.
    """
    rng = random.Random(seed)  # noqa: S311  (reproducible demo data, not secrets)
    # Candidate ids: a prefix of the seed's, then a counter (so a second load with the same
    # seed collides at once instead of silently adding a near copy).
    prefix = rng.getrandbits(64) << 64
    utc = now.tzinfo
    stamp = datetime.fromtimestamp
    t_now = now.timestamp()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    t_midnight = midnight.timestamp()
    day_offsets = list(range(days))
    day_cum = _cumulative(
        [DEMO_WEEKDAY_WEIGHT[(midnight - timedelta(days=d)).weekday()] for d in day_offsets]
    )
    durations = [d for d, _ in DEMO_DURATIONS]
    duration_cum = _cumulative([w for _, w in DEMO_DURATIONS])
    hour_cum = _cumulative([w for _, _, w in DEMO_START_HOUR])
    n_active = min(candidates, max(1, round(candidates * DEMO_ACTIVE_SHARE)))
    active_ids = set(rng.sample(range(candidates), n_active))
    abandon = policy.abandon_after.total_seconds()
    choices, rand, uniform = rng.choices, rng.random, rng.uniform

    # 1. when each session starts and how long it may last, then in order of start
    plans: list[tuple[float, int, int, bool]] = []
    for i in range(candidates):
        duration = choices(durations, cum_weights=duration_cum)[0]
        extra = rng.choice((10, 15, 30)) if rand() < 0.03 else 0
        allowed = (duration + extra) * 60.0
        if i in active_ids:
            start = t_now - uniform(120.0, allowed - 60.0)
        else:
            # a start that leaves the session time to end before now, drawn again until it
            # does (a handful of tries; then the latest such start)
            latest = t_now - allowed - 300.0
            for _ in range(20):
                day = choices(day_offsets, cum_weights=day_cum)[0]
                mean, sd, _ = choices(DEMO_START_HOUR, cum_weights=hour_cum)[0]
                start = t_midnight - day * 86400.0 + (rng.gauss(mean, sd) % 24) * 3600.0
                if start <= latest:
                    break
            else:
                start = latest - uniform(0.0, 3600.0)
        plans.append((start, duration, extra, i in active_ids))
    plans.sort()

    # 2. each session's outcome, row and events
    batch = DemoBatch()
    for i, (start, duration, extra, active) in enumerate(plans):
        cid = str(uuid.UUID(int=prefix | i, version=4))
        n_sections = DEMO_SECTION_COUNT[duration]
        allowed = (duration + extra) * 60.0
        deadline = start + allowed
        method: str | None
        ended: float | None
        if active:
            heartbeat = t_now - (uniform(0.0, 14.0) if rand() < 0.88 else uniform(35.0, 200.0))
            heartbeat = max(heartbeat, start)
            sections = int((t_now - start) / allowed * n_sections)
            status, method, ended, stop = "active", None, None, heartbeat
            batch.active.append(cid)
        else:
            hour = int((start % 86400.0) // 3600.0)
            p_gave_up = (
                0.10 + (0.05 if duration >= 90 else 0.0) + (0.06 if hour >= 21 or hour < 6 else 0.0)
            )
            if rand() < p_gave_up:
                r = rand()
                method = "heartbeat_timeout" if r < 0.70 else "tab_close"
                if r >= 0.92:
                    method = "admin_terminated"
                share = uniform(0.0, 0.1) if rand() < 0.35 else rng.betavariate(2, 2.2)
                left = start + share * allowed
                if method == "heartbeat_timeout":
                    if left + abandon >= deadline:
                        left = max(start, deadline - abandon - uniform(1.0, 60.0))
                    ended, heartbeat = left + abandon, left
                else:
                    ended, heartbeat = left, max(start, left - uniform(0.0, 15.0))
                status = "completed" if method == "tab_close" else "abandoned"
                sections = min(n_sections, int((left - start) / allowed * n_sections))
                stop = left
            else:
                r = rand()
                if r < 0.84 or r >= 0.98:
                    method = "manual" if r < 0.84 else "admin"
                    ended = start + min(max(rng.betavariate(6, 2.5), 0.05), 0.995) * allowed
                    sections = n_sections if rand() < 0.92 else n_sections - 1
                else:
                    method, ended = "timer_expired", deadline
                    q = rand()
                    sections = max(0, n_sections - (0 if q < 0.3 else 1 if q < 0.8 else 2))
                status = "completed"
                heartbeat = max(start, ended - uniform(0.0, 15.0))
                stop = ended

        # the session row
        bits = rng.getrandbits(6 * sections) if sections else 0
        answers = ", ".join(
            f'{key}"{"ABCD"[(bits >> (2 * j)) & 3]}"'
            for j, key in enumerate(_ANSWER_KEYS[sections])
        )
        started_at = stamp(start, utc)
        ended_at = stamp(ended, utc) if ended is not None else None
        heartbeat_at = stamp(heartbeat, utc)
        batch.candidates.append((cid,))
        batch.sessions.append(
            (
                cid,
                started_at,
                duration,
                extra,
                heartbeat_at,
                stamp(max(start, heartbeat - uniform(0.0, 30.0)), utc),
                status,
                method,
                ended_at,
                _SECTIONS_JSON[sections],
                _SECTIONS_JSON[n_sections],
                "{" + answers + "}",
                _ANSWER_SEQ_JSON[sections],
                started_at,
                ended_at or heartbeat_at,
                stamp(deadline, utc),
            )
        )

        # its events
        events = batch.events
        events.append((cid, "started", started_at, "system", f'{{"duration_minutes": {duration}}}'))
        span = stop - start
        for k in range(sections):
            at = start + span * (k + 1) / (sections + 1)
            events.append(
                (cid, "answers_saved", stamp(at - 2.0, utc), "candidate", _SAVED_DETAIL[k])
            )
            events.append(
                (cid, "section_completed", stamp(at, utc), "candidate", _SECTION_DETAIL[k])
            )
        for _ in range(_poisson(rng, 1.8 if method in _GAVE_UP else 0.6)):
            lost = start + span * rand()
            kinds = _FOCUS_KINDS[rand() < 0.5]
            events.append((cid, kinds[0], stamp(lost, utc), "candidate", "{}"))
            back = lost + rng.expovariate(1 / 25)
            if back < stop:
                events.append((cid, kinds[1], stamp(back, utc), "candidate", "{}"))
        if rand() < 0.06 and span > 120.0:
            events.append(
                (
                    cid,
                    "resumed",
                    stamp(start + span * rand(), utc),
                    "candidate",
                    f'{{"gap_seconds": {uniform(31, 200):.1f}, "after_tab_close": false}}',
                )
            )
        if extra:
            events.append(
                (
                    cid,
                    "time_extended",
                    stamp(start + span * uniform(0.2, 0.8), utc),
                    "staff",
                    f'{{"minutes": {extra}, "reason": "accommodation", '
                    f'"deadline": "{stamp(deadline, utc).isoformat()}"}}',
                )
            )
        if method is not None and ended_at is not None:
            if method == "tab_close":
                events.append((cid, "tab_closed", ended_at, "candidate", "{}"))
            events.append(
                (
                    cid,
                    status,
                    ended_at,
                    _END_ACTOR.get(method, "sweeper"),
                    f'{{"method": "{method}"}}',
                )
            )

        if len(batch.candidates) >= chunk:
            yield batch
            batch = DemoBatch()
    if batch.candidates:
        yield batch
