"""Bulk actions: one staff action applied to many sessions, each on its own.

Each session gets the very operation its single-session route calls (service.Sessions), in a
transaction of its own, so a refusal for one (ended, unknown) changes nothing for the others
and every rule keeps its one home. The reply lists every session asked for exactly once, in
the order asked, with what happened to it. Pure orchestration: no SQL, no HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from invigilator.domain import Incident, InvigilatorError, Session, Status

Result = Literal["changed", "unchanged", "refused"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one session's operation did: `changed` False for a harmless repeat (ending a
    session that had already ended)."""

    changed: bool
    status: Status | None


#: The operation a bulk action runs on one session.
Step = Callable[[str], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class Filter:
    """Sessions by stored status and by start, `[started_since, started_until)`."""

    status: Status | None = None
    started_since: datetime | None = None
    started_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Item:
    candidate_id: str
    result: Result
    status: Status | None = None
    code: str | None = None  # a refusal's stable error code (api/problems.py)
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    action: str
    items: list[Item]

    def count(self, result: Result) -> int:
        return sum(1 for item in self.items if item.result == result)


async def session_changed(operation: Awaitable[Session]) -> Outcome:
    session = await operation
    return Outcome(True, session.status)


async def ended(operation: Awaitable[tuple[Session, bool]]) -> Outcome:
    session, ended_now = await operation
    return Outcome(ended_now, session.status)


async def recorded(operation: Awaitable[Incident]) -> Outcome:
    await operation
    return Outcome(True, None)


async def run(step: Step, candidate_ids: Sequence[str], concurrency: int) -> list[Item]:
    """`step` once for each session, at most `concurrency` at a time (so a bulk action never
    takes the whole pool from candidates' saves); every refusal is that session's result."""
    gate = asyncio.Semaphore(concurrency)

    async def one(candidate_id: str) -> Item:
        async with gate:
            try:
                outcome = await step(candidate_id)
            except InvigilatorError as exc:
                status = exc.detail.get("session_status")
                return Item(
                    candidate_id,
                    "refused",
                    status=Status(status) if isinstance(status, str) else None,
                    code=exc.code,
                    message=exc.message,
                )
        return Item(
            candidate_id, "changed" if outcome.changed else "unchanged", status=outcome.status
        )

    return list(await asyncio.gather(*(one(candidate_id) for candidate_id in candidate_ids)))
