"""The sweeper: ends every session that is due, whether or not anybody is watching.

Correctness never depends on it (every read and write applies lazy expiry); it makes sessions
end on time in the database, so analytics and staff views agree with the clock. Many may run at
once: each batch is one transaction (`Sessions.sweep`: the due sessions picked with FOR UPDATE
SKIP LOCKED, then the one ending statement lazy expiry uses too), which writes the end and its
terminal event together, so a sweeper killed mid-batch leaves nothing half-done and two
sweepers never end the same session.

It runs inside `invigilator serve` and standalone as `invigilator sweep`:

    stop = asyncio.Event()
    await Sweeper(sessions, interval=5.0, batch_size=500).run(stop)   # until stop is set

Logs say how many sessions ended and how, never what anybody answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Protocol

from invigilator import metrics
from invigilator.analytics import RolledUp
from invigilator.domain import DatabaseUnavailable, Ended, InvigilatorError, Method
from invigilator.privacy import Purged

log = logging.getLogger(__name__)

#: Quarter hours rolled up for the report per pass (about 10 ms each): a month's backlog
#: (2,880) takes a few minutes of passes after an upgrade, and a pass stays short.
ROLLUP_PER_PASS = 100


class Sweeps(Protocol):
    """What a sweeper drives: `service.Sessions`, or a stand-in in a unit test."""

    async def sweep(self, batch_size: int) -> list[Ended]: ...

    async def purge_ended(self, keep: timedelta, batch_size: int) -> Purged: ...

    async def roll_up(self, limit: int) -> RolledUp: ...


async def sweep_once(
    sessions: Sweeps,
    *,
    batch_size: int,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[list[Ended]], None] | None = None,
) -> list[Ended]:
    """Finalize what is due now, in batches of at most `batch_size` (one transaction each),
    until a batch comes back short. Returns every session this call ended.

    `stop`, when set, ends the pass after the batch in flight (never inside one).
    `on_batch` sees each committed, non-empty batch as soon as it is committed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ended: list[Ended] = []
    while True:
        batch = await sessions.sweep(batch_size)
        ended += batch
        if batch and on_batch is not None:
            on_batch(batch)
        if len(batch) < batch_size or (stop is not None and stop.is_set()):
            return ended


def count_by_method(ended: Iterable[Ended]) -> Counter[Method]:
    return Counter(e.completion_method for e in ended)


def describe(counts: Counter[Method]) -> str:
    """`timer_expired=3, heartbeat_timeout=1`, in the order of `Method`."""
    return ", ".join(f"{m.value}={counts[m]}" for m in Method if counts[m])


class Sweeper:
    """Sweeps every `interval` seconds until told to stop; survives the database going away."""

    def __init__(
        self,
        sessions: Sweeps,
        *,
        interval: float,
        batch_size: int,
        retention: timedelta | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.sessions = sessions
        self.interval = interval
        self.batch_size = batch_size
        #: INVIGILATOR_RETENTION_DAYS: answers and timelines of sessions ended longer ago go.
        self.retention = retention
        #: Sessions whose answers and timeline this sweeper removed (retention).
        self.purged = 0
        #: Sessions this sweeper has ended since it was made, by method.
        self.finalized: Counter[Method] = Counter()
        #: Passes run, and passes that failed (the database unavailable, or worse).
        self.passes = 0
        self.failures = 0
        #: Quarter hours written to the report's rollup (analytics.roll_up).
        self.rolled_up = 0

    async def sweep(self, stop: asyncio.Event | None = None) -> list[Ended]:
        """One pass: finalize what is due and log it. Never raises for a database problem;
        what was committed before a failure is kept, counted and returned."""
        committed: list[Ended] = []
        self.passes += 1
        failures_before = self.failures
        try:
            await sweep_once(
                self.sessions, batch_size=self.batch_size, stop=stop, on_batch=committed.extend
            )
            if self.retention is not None:
                await self._purge(self.retention, stop)
            if not (stop is not None and stop.is_set()):
                rolled = await self.sessions.roll_up(ROLLUP_PER_PASS)
                self.rolled_up += rolled.buckets
                if rolled.buckets:
                    log.debug(
                        "report rollup: %d quarter hour(s), %d ready", rolled.buckets, rolled.ready
                    )
        except DatabaseUnavailable as exc:
            self.failures += 1
            log.warning("sweeper: %s (next try in %gs)", exc.message, self.interval)
        except InvigilatorError as exc:  # e.g. the schema is missing: say so, keep trying
            self.failures += 1
            log.error("sweeper: %s (next try in %gs)", exc.message, self.interval)
        except Exception:
            # A sweeper that dies quietly inside `serve` is worse than one that keeps trying.
            self.failures += 1
            log.exception("sweeper pass failed (next try in %gs)", self.interval)
        finally:  # even when cancelled: what was committed is reported
            self._report(committed)
            metrics.observe_sweep(committed, failed=self.failures > failures_before)
        return committed

    async def _purge(self, keep: timedelta, stop: asyncio.Event | None) -> None:
        """The retention rule, in batches of `batch_size` (one transaction each) until one
        comes back short; a set `stop` ends it between batches."""
        while True:
            batch = await self.sessions.purge_ended(keep, self.batch_size)
            self.purged += batch.sessions
            if batch.sessions:
                log.info(
                    "retention: removed the answers and timeline of %d session(s) "
                    "(%d event(s), %d webhook delivery(ies))",
                    batch.sessions,
                    batch.events,
                    batch.deliveries,
                )
            if batch.sessions < self.batch_size or (stop is not None and stop.is_set()):
                return

    def _report(self, committed: list[Ended]) -> None:
        if not committed:
            return
        counts = count_by_method(committed)
        self.finalized.update(counts)
        log.info("sweeper finalized %d session(s): %s", len(committed), describe(counts))
        for e in committed:
            log.debug(
                "finalized %s: %s/%s at %s",
                e.candidate_id,
                e.status.value,
                e.completion_method.value,
                e.completed_at.isoformat(),
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep now and then every `interval` seconds until `stop` is set. A set `stop` is
        honoured between batches: the batch in flight is committed first."""
        loop = asyncio.get_running_loop()
        log.info(
            "sweeper started: every %gs, batches of at most %d", self.interval, self.batch_size
        )
        while not stop.is_set():
            started = loop.time()
            await self.sweep(stop)
            if stop.is_set():
                break
            pause = max(0.0, self.interval - (loop.time() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        total = sum(self.finalized.values())
        log.info(
            "sweeper stopped after %d pass(es); finalized %d session(s)%s",
            self.passes,
            total,
            f": {describe(self.finalized)}" if total else "",
        )
