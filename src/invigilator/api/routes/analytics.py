"""Staff analytics over HTTP: the summary, the live view and the charts (invigilator.analytics)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Response

from invigilator import analytics, charts
from invigilator.api.deps import RuntimeDep, StaffDep
from invigilator.api.problems import responses
from invigilator.api.routes import operation_id
from invigilator.domain import InvalidInput

router = APIRouter(
    generate_unique_id_function=operation_id, tags=["analytics"], responses=responses(401, 422, 503)
)

Bound = Annotated[
    str | None,
    Query(max_length=40, description="YYYY-MM-DD or ISO 8601; the window is [since, until)"),
]
Zone = Annotated[str, Query(max_length=64, description="IANA zone for hours, weekdays, days")]


def _bounds(since: str | None, until: str | None, tz: str) -> tuple[datetime | None, ...]:
    return tuple(analytics.parse_bound(b, tz) if b else None for b in (since, until))


@router.get("/api/v1/analytics/summary", response_model=analytics.Summary)
async def summary(
    staff: StaffDep, runtime: RuntimeDep, since: Bound = None, until: Bound = None, tz: Zone = "UTC"
) -> dict[str, Any]:
    """Counts, completion rate, durations, abandonment patterns and the daily trend for the
    sessions that started in the window (default: the last 30 days). Always computed now;
    the charts of the same window are then drawn from it."""
    start, end = _bounds(since, until, tz)
    result = await analytics.summary(runtime.pool, start, end, runtime.policy, tz=tz)
    runtime.summaries.put((start, end, tz), result)
    return dict(result)


@router.get("/api/v1/live", response_model=analytics.Live)
async def live(
    staff: StaffDep, runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 500
) -> dict[str, Any]:
    """Running sessions with remaining time and seconds since the last heartbeat; silent first."""
    return dict(await analytics.live(runtime.pool, runtime.policy, limit=limit))


@router.get(
    "/api/v1/analytics/charts/{name}.svg",
    response_class=Response,
    responses={
        200: {
            "description": "The chart, as SVG",
            "content": {"image/svg+xml": {"schema": {"type": "string"}}},
        }
    },
)
async def chart(
    name: str,
    staff: StaffDep,
    runtime: RuntimeDep,
    since: Bound = None,
    until: Bound = None,
    tz: Zone = "UTC",
) -> Response:
    """One of the report's charts as SVG (the same drawing as `invigilator report --charts`),
    from the window's summary of the last 15 seconds when there is one (the dashboard reads
    the summary, then its six charts), else from one computed now."""
    if name not in charts.CHARTS:
        raise InvalidInput(f"no chart {name!r}; charts: {', '.join(charts.NAMES)}")
    start, end = _bounds(since, until, tz)
    result = await runtime.summaries.get(
        (start, end, tz),
        lambda: analytics.summary(runtime.pool, start, end, runtime.policy, tz=tz),
    )
    svg = await anyio.to_thread.run_sync(charts.render, result, name, "svg")
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})
