"""Coalescing heartbeats: the hot path of the service.

Every candidate's browser beats every 15–30 s for the whole test, so heartbeats are most of
the traffic. One commit per heartbeat caps a connection at a few thousand per second; one
`UPDATE … FROM unnest(…)` for hundreds of them costs little more than one.

One batch is written at a time (per process); while it is, new heartbeats queue, and the
next batch takes them all, so under load batches grow by themselves and follow each other on
one connection. When the writer is idle, the first heartbeat waits `linger` seconds (5 ms by
default, INVIGILATOR_HEARTBEAT_LINGER_MS) for company: at moderate load that turns one commit
per heartbeat into one per handful, for a delay nobody sees in a 15 s rhythm. A heartbeat is
answered only after its batch committed, so an acknowledged heartbeat is durable, like any
other write. With one batch at a time, a batch waiting on a row lock (a staff action holding
a session) holds the next ones back: at most `INVIGILATOR_STATEMENT_TIMEOUT_MS` (10 s), after
which that batch fails and its heartbeats are answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import psycopg

from invigilator.domain import Clock, InvigilatorError
from invigilator.store import SessionStore

log = logging.getLogger(__name__)

#: A queued heartbeat: candidate_id, active, and the future its caller awaits.
_Beat = tuple[str, bool, asyncio.Future[Clock]]


class HeartbeatBatcher:
    def __init__(
        self,
        store: SessionStore,
        *,
        max_batch: int = 500,
        max_in_flight: int = 1,
        linger: float = 0.0,
    ):
        self.store = store
        self.linger = linger
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[_Beat] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # The linger ends early once as many heartbeats are queued as the last batch held:
        # when they come in waves (every client waiting for the previous batch), the wave is
        # all there long before the linger is over.
        self._expected = 2
        self._company: asyncio.Future[None] | None = None

    async def beat(self, candidate_id: str, *, active: bool = False) -> Clock:
        """Record a heartbeat; returns the session's clock once committed."""
        future: asyncio.Future[Clock] = asyncio.get_running_loop().create_future()
        self._queue.append((candidate_id, active, future))
        company = self._company
        if company is not None and len(self._queue) >= self._expected and not company.done():
            company.set_result(None)
        if self._in_flight < self.max_in_flight:
            self._in_flight += 1
            self._spawn(self._drain())
        return await future

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Beat]:
        batch = self._queue[: self.max_batch]
        del self._queue[: self.max_batch]
        return batch

    async def _drain(self) -> None:
        try:
            await self._linger()
            while self._queue:
                batch = self._take()
                try:
                    await self._run(batch)
                except _Failed as failed:
                    if not failed.broken:
                        _fail(failed.batch, failed.error)
                        continue
                    # A connection a restart killed: that batch once more, on a new one.
                    try:
                        await self._run(failed.batch)
                    except _Failed as again:
                        _fail(again.batch, again.error)
        finally:
            self._in_flight -= 1

    async def _linger(self) -> None:
        if not self.linger or len(self._queue) >= self._expected:
            return
        loop = asyncio.get_running_loop()
        self._company = company = loop.create_future()
        timer = loop.call_later(self.linger, _settle, company)
        try:
            await company
        finally:
            timer.cancel()
            self._company = None

    async def _run(self, batch: list[_Beat]) -> None:
        """Write `batch`, then whatever queued meanwhile, on one connection (under load the
        batches follow each other on it; when the queue is empty it goes back to the pool).
        Raises _Failed with the batch that could not be written."""
        try:
            async with self.store.heartbeat_connection() as conn:
                while True:
                    try:
                        await self._write(batch, conn)
                    except Exception as exc:
                        raise _Failed(batch, exc, broken=conn.broken) from exc
                    self._expected = max(2, len(batch))
                    if not self._queue:
                        return
                    batch = self._take()
        except _Failed:
            raise
        except Exception as exc:  # no connection to be had
            raise _Failed(batch, exc, broken=False) from exc

    async def _write(
        self,
        batch: list[_Beat],
        conn: psycopg.AsyncConnection[Any],
    ) -> None:
        beats: dict[str, bool] = {}
        for candidate_id, active, _ in batch:  # two tabs of one candidate: one write
            beats[candidate_id] = beats.get(candidate_id, False) or active
        clocks = await self.store.heartbeat_batch(beats, conn)
        for candidate_id, _, future in batch:
            clock = clocks.get(candidate_id)
            if future.done():
                continue
            if clock is not None:
                future.set_result(clock)
            else:
                self._spawn(self._explain(candidate_id, future))

    async def _explain(self, candidate_id: str, future: asyncio.Future[Clock]) -> None:
        """A refused heartbeat gets its reason (ended, or no such session) from the store,
        which applies lazy expiry on the way."""
        try:
            reason: BaseException = await self.store.explain_refused_heartbeat(candidate_id)
        except Exception as exc:
            if not isinstance(exc, InvigilatorError):
                log.exception("explaining a refused heartbeat failed")
            reason = exc
        if not future.done():
            future.set_exception(reason)

    async def close(self) -> None:
        """Wait for queued heartbeats to be written (graceful shutdown)."""
        while self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._tasks), return_exceptions=True)


class _Failed(Exception):
    """A batch that could not be written; `broken`: its connection died under it (a database
    restart, a network cut), so writing it again on a new one may well work."""

    def __init__(self, batch: list[_Beat], error: Exception, *, broken: bool) -> None:
        super().__init__(str(error))
        self.batch = batch
        self.error = error
        self.broken = broken


def _fail(batch: list[_Beat], error: Exception) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
