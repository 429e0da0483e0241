"""`invigilator report`: how candidates fare, as tables, JSON, CSV and charts.

The numbers come from `invigilator.analytics`, the same module the API and the dashboard use;
this module only presents them. docs/analytics.md defines every metric.
"""

from __future__ import annotations

import asyncio
import csv
import enum
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from invigilator import analytics, charts
from invigilator.analytics import Live, Summary
from invigilator.cli.app import CommandFailed, app, database, err, out
from invigilator.cli.connect import open_pool
from invigilator.cli.options import DatabaseUrl
from invigilator.config import Settings
from invigilator.db.selection import Database


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


@app.command("report", short_help="How candidates fare: completion, durations, abandonment.")
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
    settings = Settings()
    db = database(database_url, settings)
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
            raise CommandFailed(
                f"cannot write the charts into {charts}: {exc.strerror or exc}"
            ) from None
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
    # The live view runs beside the summary, on a connection of its own.
    async with open_pool(db, settings, size=2 if with_live else 1) as pool:
        policy = settings.policy()
        summary_task = asyncio.ensure_future(
            analytics.summary(pool, since, until, policy, tz=tz, minute_bucket=bucket)
        )
        try:
            live = await analytics.live(pool, policy, limit=10) if with_live else None
        finally:
            summary = await summary_task
        return summary, live


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
    overview.add_row("paused by staff (at least once)", f"{s['paused']['sessions']:,}")
    overview.add_row("  paused right now", f"{s['paused']['now']:,}")
    overview.add_row("reopened (at least once)", f"{s['reopened']['sessions']:,}")
    d = s["duration_seconds"]
    overview.add_row("duration of completed: mean", charts.clock(d["mean"]))
    overview.add_row("  median", charts.clock(d["median"]))
    overview.add_row("  p90", charts.clock(d["p90"]))
    share = s["duration_share"]
    overview.add_row("share of allowed time used: mean", charts.pct(share["mean"]))
    overview.add_row("  median", charts.pct(share["median"]))
    flagged = s["flagged"]
    severities = ", ".join(f"{k} {n:,}" for k, n in flagged["by_severity"].items() if n)
    overview.add_row(
        "flagged (with an incident)",
        f"{flagged['total']:,} ({charts.pct(flagged['share'])})"
        + (f": {severities}" if severities else ""),
    )
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

    spread = s["multiple_devices"]
    pages = Table(
        title=f"Opened from more than one device or address: {spread['sessions']:,} "
        f"({charts.pct(spread['share'])} of sessions)",
        title_justify="left",
    )
    pages.add_column("more than one", justify="left")
    pages.add_column("sessions", justify="right")
    pages.add_row("device (user agent)", f"{spread['devices']:,}")
    pages.add_row("client address", f"{spread['addresses']:,}")
    parts.append(pages)

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
