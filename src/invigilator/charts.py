"""The analytics charts, drawn with matplotlib (Agg, headless) from an analytics Summary.

One drawing per chart, used by `invigilator report --charts` (files) and by the staff
dashboard (SVG over HTTP), so both always show the same picture.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

from invigilator import analytics
from invigilator.analytics import Summary

COMPLETED_COLOR = "#2e7d32"
ABANDONED_COLOR = "#c62828"
NEUTRAL_COLOR = "#1565c0"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def clock(seconds: float | None) -> str:
    """Seconds as 1h02m03s or 2m03s; – when undefined."""
    if seconds is None:
        return "–"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return (
        f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    )


def _window(summary: Summary) -> str:
    return f"{summary['window']['since'][:10]} – {summary['window']['until'][:10]}"


def _empty(ax: Any, data: Sequence[Any]) -> None:
    if not data or not any(data):
        ax.text(
            0.5,
            0.5,
            "no sessions in this window",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )


def _minute_bars(ax: Any, buckets: Sequence[analytics.MinuteBucket], color: str) -> None:
    if buckets:
        width = buckets[0]["to_minute"] - buckets[0]["from_minute"]
        ax.bar(
            [b["from_minute"] for b in buckets],
            [b["count"] for b in buckets],
            width=width,
            align="edge",
            color=color,
            edgecolor="white",
        )


def completion_by_method(summary: Summary, fig: Any) -> None:
    ax = fig.add_subplot()
    names = list(summary["by_method"])
    counts = [summary["by_method"][n]["count"] for n in names]
    colors = [
        COMPLETED_COLOR if summary["by_method"][n]["status"] == "completed" else ABANDONED_COLOR
        for n in names
    ]
    bars = ax.barh(names[::-1], counts[::-1], color=colors[::-1])
    labels = [pct(summary["by_method"][n]["rate"]) for n in names[::-1]]
    ax.bar_label(bars, labels=labels, padding=3)
    ax.set_xlabel("sessions")
    ax.set_title(
        f"How sessions ended · completion rate {pct(summary['completion_rate'])} · "
        f"{_window(summary)}"
    )
    ax.margins(x=0.15)
    _empty(ax, counts)


def duration_histogram(summary: Summary, fig: Any) -> None:
    ax = fig.add_subplot()
    hist = summary["duration_histogram"]
    _minute_bars(ax, hist, NEUTRAL_COLOR)
    d = summary["duration_seconds"]
    for stat, style in (("median", "--"), ("p90", ":")):
        value = d[stat]  # type: ignore[literal-required]
        if value is not None:
            ax.axvline(value / 60, color="black", linestyle=style, label=f"{stat} {clock(value)}")
    if d["count"]:
        ax.legend()
    ax.set_xlabel("minutes from start to completion")
    ax.set_ylabel("completed sessions")
    ax.set_title(f"Duration of completed sessions · {_window(summary)}")
    _empty(ax, [b["count"] for b in hist])


def abandonment_by_minute(summary: Summary, fig: Any) -> None:
    ax = fig.add_subplot()
    by_minute = summary["abandonment"]["by_minute"]
    _minute_bars(ax, by_minute, ABANDONED_COLOR)
    ax.set_xlabel("minutes into the test when the candidate left")
    ax.set_ylabel("sessions given up")
    ax.set_title(f"When candidates give up · {_window(summary)}")
    _empty(ax, [b["count"] for b in by_minute])


def abandonment_by_sections(summary: Summary, fig: Any) -> None:
    ax = fig.add_subplot()
    steps = summary["abandonment"]["by_sections_completed"]
    xs = [st["sections"] for st in steps]
    reached = ax.bar(xs, [st["reached"] for st in steps], color="#90caf9", label="reached")
    ax.bar(xs, [st["count"] for st in steps], color=ABANDONED_COLOR, label="gave up there")
    ax.bar_label(reached, labels=[f"{pct(st['rate'])} gave up" for st in steps], padding=3)
    ax.margins(y=0.12)
    if steps:
        ax.legend()
        ax.set_xticks(xs)
    ax.set_xlabel("sections completed")
    ax.set_ylabel("sessions")
    ax.set_title(f"Funnel: where candidates give up · {_window(summary)}")
    _empty(ax, [st["reached"] for st in steps])


def abandonment_by_hour(summary: Summary, fig: Any) -> None:
    ax = fig.add_subplot()
    hours = summary["abandonment"]["by_hour"]
    ax.bar([h["hour"] for h in hours], [h["count"] for h in hours], color=ABANDONED_COLOR)
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel(f"hour of day ({summary['window']['timezone']})")
    ax.set_ylabel("sessions given up")
    ax.set_title(f"Giving up by hour of day · {_window(summary)}")
    _empty(ax, [h["count"] for h in hours])


def daily_trend(summary: Summary, fig: Any) -> None:
    ax = fig.add_subplot()
    days = summary["daily"]
    dates = list(range(len(days)))
    step = max(1, math.ceil(len(days) / 12))
    ax.set_xticks(dates[::step], [x["date"] for x in days][::step])
    for key, color in (
        ("started", NEUTRAL_COLOR),
        ("completed", COMPLETED_COLOR),
        ("abandoned", ABANDONED_COLOR),
    ):
        ax.plot(dates, [x[key] for x in days], color=color, marker=".", label=key)  # type: ignore[literal-required]
    ax.legend()
    ax.set_ylabel("sessions (by the day they started)")
    ax.set_title(f"Daily trend · {_window(summary)}")
    fig.autofmt_xdate()
    _empty(ax, [x["started"] for x in days])


CHARTS: dict[str, tuple[Callable[[Summary, Any], None], tuple[float, float]]] = {
    "completion_by_method": (completion_by_method, (8, 4.5)),
    "duration_histogram": (duration_histogram, (8, 4.5)),
    "abandonment_by_minute": (abandonment_by_minute, (8, 4.5)),
    "abandonment_by_sections": (abandonment_by_sections, (8, 4.5)),
    "abandonment_by_hour": (abandonment_by_hour, (8, 4.5)),
    "daily_trend": (daily_trend, (9, 4.5)),
}
NAMES = tuple(CHARTS)


def render(summary: Summary, name: str, fmt: str = "svg") -> bytes:
    """One chart as PNG or SVG bytes (reproducible: no dates, fixed SVG ids)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "invigilator"
    from matplotlib.figure import Figure

    draw, size = CHARTS[name]
    fig = Figure(figsize=size)
    draw(summary, fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else {})
    return buffer.getvalue()
