"""SessionStore: the test_session table, one atomic operation per method, on the database clock.

Each method runs named queries of sql/queries.sql in one transaction (db/connector.py). The
rules are SQL functions, so the store decides nothing beyond what the SQL says atomically: it
passes the policy, names who acts, and explains a refused write (`_refusal`).
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql as pgsql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg.types.string import StrDumper
from psycopg_pool import AsyncConnectionPool

from invigilator import sql
from invigilator.db.connector import (
    Cursor,
    Row,
    autocommit,
    citus_distributed,
    constraint_name,
    retried_on_deadlock,
    transaction,
    translate_errors,
)
from invigilator.db.rows import ended_error, to_ended, to_event, to_incident, to_session
from invigilator.domain import (
    DEFAULT_DURATION_MINUTES,
    Accommodations,
    AlreadyPaused,
    Claim,
    Clock,
    Ended,
    Event,
    Incident,
    InvalidInput,
    InvigilatorError,
    Method,
    NotPaused,
    Pages,
    PageSuperseded,
    PayloadTooLarge,
    Policy,
    SaveResult,
    Session,
    SessionAlreadyEnded,
    SessionNotEnded,
    SessionNotFound,
    SessionPolicy,
    SessionPurged,
    Severity,
    Status,
    TimeUp,
)

Q = sql.queries()

#: The constraint name test_session_answers_too_large (migration 0011) raises with.
_ANSWERS_SIZE = "test_session_answers_size"


class SessionStore:
    """The test_session table. `heartbeat_pool`: connections for heartbeat batches only
    (connector.heartbeat_pool_for); without one, the main pool serves them too."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        policy: Policy,
        *,
        heartbeat_pool: AsyncConnectionPool[Any] | None = None,
    ) -> None:
        self.pool = pool
        self.heartbeat_pool = heartbeat_pool
        self.policy = policy
        self._rules = policy.sql_params()
        self._uuid_keys: bool | None = None  # learnt once: does candidate_id have type uuid?
        self._distributed: bool | None = None  # learnt once: is test_session sharded (Citus)?

    # --- plumbing -------------------------------------------------------------------------

    async def _fetch_one(self, cur: Cursor, name: str, **params: Any) -> Row | None:
        await cur.execute(Q[name], {**self._rules, **params})
        return await cur.fetchone()

    async def _is_distributed(self, cur: Cursor) -> bool:
        if self._distributed is None:
            self._distributed = await citus_distributed(cur)
        return self._distributed

    async def distributed(self) -> bool:
        """Whether test_session is sharded (Citus), learnt once."""
        if self._distributed is None:
            async with transaction(self.pool) as cur:
                return await self._is_distributed(cur)
        return self._distributed

    async def _act_on_workers(self, cur: Cursor, actor: str, reason: str | None = None) -> None:
        """On Citus, who acts (and why) for the timeline trigger, which runs on the shard:
        invigilator_act's settings stay on the coordinator (Citus runs a function in FROM
        there), and only SET LOCAL reaches the workers, with propagate_set_commands. One round
        trip more per change, on a distributed database only; on one server, nothing."""
        if not await self._is_distributed(cur):
            return
        settings = {
            "invigilator.actor": actor,
            "invigilator.reason": reason or "",
            "invigilator.resume_gap": f"{self.policy.resume_gap.total_seconds()} seconds",
        }
        statements = [pgsql.SQL("SET LOCAL citus.propagate_set_commands = 'local'")] + [
            pgsql.SQL("SET LOCAL {} = {}").format(pgsql.Identifier(*name.split(".")), value)
            for name, value in settings.items()
        ]
        # Never prepared (the heartbeat pool prepares every statement): a prepared statement
        # holds one command, and these are several in one round trip.
        await cur.execute(pgsql.SQL("; ").join(statements), prepare=False)

    async def _finalize(self, cur: Cursor, candidate_ids: list[Any], actor: str) -> list[Ended]:
        """End the due ones of these sessions; their pending_answers is then exact."""
        await self._act_on_workers(cur, actor)
        await cur.execute(
            Q["finalize"], {**self._rules, "candidate_ids": candidate_ids, "actor": actor}
        )
        rows = await cur.fetchall()
        await self._sync_answers(cur, [row["candidate_id"] for row in rows])
        return [to_ended(row) for row in rows]

    async def _settle(self, cur: Cursor, candidate_id: str) -> Session:
        """Finalize the session if it is due, then return it as stored (lazy expiry)."""
        await self._finalize(cur, [candidate_id], "system")
        row = await self._fetch_one(cur, "get_session", candidate_id=candidate_id)
        if row is None:
            raise SessionNotFound(f"no test session for candidate {candidate_id!r}")
        return to_session(row)

    async def _refusal(
        self, cur: Cursor, candidate_id: str, page_id: str | None = None
    ) -> InvigilatorError:
        """Why a guarded write matched no row: the session is unknown, or has ended (lazy
        expiry writes that end now, in the same transaction, so it is committed), or it is
        still open: then either a newer page took over (test_session_page_may_write), or it is
        past its deadline and takes only a submit (policy `grace`, test_session_takes_answers)."""
        try:
            session = await self._settle(cur, candidate_id)
        except SessionNotFound as exc:
            return exc
        if session.is_active:
            if (
                page_id is not None
                and session.pages is Pages.SINGLE
                and session.page_id not in (None, page_id)
            ):
                return _superseded()
            return TimeUp(
                "the time is up: answers are no longer taken, the test may only be submitted",
                deadline=session.deadline.isoformat(),
            )
        return ended_error(session)

    @retried_on_deadlock
    async def _guarded_write(self, name: str, candidate_id: str, **params: Any) -> Session:
        """Run a write guarded by test_session_open (and the page claim); explain a refusal."""
        params.setdefault("page_id", None)
        async with transaction(self.pool) as cur:
            await self._act_on_workers(cur, params.get("actor", "candidate"), params.get("reason"))
            row = await self._fetch_one(cur, name, candidate_id=candidate_id, **params)
            refusal = (
                None
                if row is not None
                else await self._refusal(cur, candidate_id, params["page_id"])
            )
        if row is None:
            assert refusal is not None
            raise refusal
        return to_session(row)

    # --- operations -----------------------------------------------------------------------

    @retried_on_deadlock
    async def start(
        self,
        candidate_id: str,
        *,
        duration_minutes: int = DEFAULT_DURATION_MINUTES,
        planned_sections: list[str] | None = None,
        create_candidate: bool = False,
        actor: str = "system",
        pages: Pages | None = None,
        policy: SessionPolicy | None = None,
        accommodations: Accommodations | None = None,
    ) -> tuple[Session, bool]:
        """Start a session; `(session, True)` when created, `(existing, False)` when the candidate
        already has an active one. Refused (SessionAlreadyEnded) when theirs has ended.
        `policy`: the session's own (None: the deployment's, stored explicitly)."""
        policy = policy or self.policy.session_policy()
        accommodations = accommodations or Accommodations(time_multiplier=1.0, extra_minutes=0)
        async with transaction(self.pool) as cur:
            if create_candidate:
                await cur.execute(Q["create_candidate"], {"candidate_id": candidate_id})
            await self._act_on_workers(cur, actor)
            row = await self._fetch_one(
                cur,
                "start_session",
                candidate_id=candidate_id,
                duration_minutes=duration_minutes,
                planned_sections=Jsonb(planned_sections) if planned_sections is not None else None,
                actor=actor,
                pages=Pages(pages or self.policy.pages).value,
                abandon_after_seconds=policy.abandon_after_seconds,
                tab_close=policy.tab_close.value if policy.tab_close else None,
                at_deadline=policy.at_deadline.value if policy.at_deadline else None,
                grace_seconds=policy.grace_seconds,
                time_multiplier=accommodations.time_multiplier,
                accommodation_minutes=accommodations.extra_minutes,
            )
            if row is not None:
                return to_session(row), True
            existing = await self._settle(cur, candidate_id)
        if existing.is_active:
            return existing, False
        raise SessionAlreadyEnded(
            "this candidate's test session has already ended; it cannot be started again",
            session_status=existing.status.value,
        )

    async def get(self, candidate_id: str) -> Session:
        async with transaction(self.pool) as cur:
            return await self._settle(cur, candidate_id)

    async def explain_refused_heartbeat(self, candidate_id: str) -> InvigilatorError:
        """Why a heartbeat batch did not take this candidate's heartbeat (lazy expiry included)."""
        async with transaction(self.pool) as cur:
            return await self._refusal(cur, candidate_id)

    @contextlib.asynccontextmanager
    async def heartbeat_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for a run of heartbeat batches, in autocommit: from the heartbeat pool
        when there is one, else from the main pool. Under load the batches of a run follow
        each other on it: one checkout for many batches."""
        async with autocommit(self.heartbeat_pool or self.pool) as conn:
            yield conn

    @retried_on_deadlock
    async def heartbeat_batch(
        self, beats: dict[str, bool], conn: psycopg.AsyncConnection[Any] | None = None
    ) -> dict[str, Clock]:
        """Heartbeats for many sessions in one statement (and one commit): {candidate_id: active}.

        Returns the clock of every session that took its heartbeat. A session missing from the
        result was refused (ended, due or unknown): `explain_refused_heartbeat` says which.
        `conn`: one from `heartbeat_connection()`; without it, one is checked out for this batch.
        """
        if not beats:
            return {}
        if conn is None:
            async with self.heartbeat_connection() as held:
                return await self.heartbeat_batch(beats, held)
        with translate_errors():
            async with conn.cursor(row_factory=dict_row) as cur:
                if not await self._is_distributed(cur):
                    return await self._beat(cur, beats)
                async with conn.transaction():  # SET LOCAL needs one (_act_on_workers)
                    return await self._beat(cur, beats)

    async def _beat(self, cur: Cursor, beats: dict[str, bool]) -> dict[str, Clock]:
        """The batch statement over `beats`, on `cur`: the clocks of the sessions it took."""
        if self._uuid_keys is None:
            await cur.execute(
                "SELECT atttypid = 'uuid'::regtype AS is_uuid FROM pg_attribute "
                "WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id'"
            )
            row = await cur.fetchone()
            self._uuid_keys = bool(row and row["is_uuid"])
        # The caller's spelling of each id, by the database's (uuids come back canonical).
        spelled: dict[str, str] = {}
        keyed: list[tuple[Any, bool]] = []
        for given, is_active in beats.items():
            key: Any = _as_uuid(given) if self._uuid_keys else given
            if key is None:
                continue  # not a uuid: no such session; the explanation will say so
            spelled[str(key)] = given
            keyed.append((key, is_active))
        if not keyed:
            return {}
        keyed.sort(key=lambda pair: str(pair[0]))  # one lock order: no deadlock between batches
        await self._act_on_workers(cur, "candidate")
        if not self._uuid_keys:
            # A list of str would go as unknown[]; unnest() needs to know it is text[].
            cur.adapters.register_dumper(str, StrDumper)
        await cur.execute(
            Q["heartbeat_batch"],
            {
                **self._rules,
                "candidate_ids": [key for key, _ in keyed],
                "active": [is_active for _, is_active in keyed],
            },
        )
        rows = await cur.fetchall()
        waiting = [r["candidate_id"] for r in rows if r["awaiting_candidate"]]
        if waiting:  # reopened sessions heard from again: their clocks start now
            await cur.execute(Q["start_reopened_clock"], {**self._rules, "candidate_ids": waiting})
            started = {r["candidate_id"]: r for r in await cur.fetchall()}
            rows = [started.get(r["candidate_id"], r) for r in rows]
        clocks = {}
        for r in rows:
            given = spelled[str(r["candidate_id"])]
            clocks[given] = Clock(
                candidate_id=given,
                status=Status(r["status"]),
                deadline=r["deadline"],
                server_now=r["server_now"],
                paused_at=r["paused_at"],
            )
        return clocks

    @retried_on_deadlock
    async def heartbeat(self, candidate_id: str, *, active: bool = False) -> Session:
        """One heartbeat, as a batch of one (the hot path's statement), and the session as it
        then is, in one transaction; a refusal explained."""
        async with transaction(self.pool) as cur:
            if candidate_id in await self._beat(cur, {candidate_id: active}):
                return await self._settle(cur, candidate_id)
            refusal = await self._refusal(cur, candidate_id)
        raise refusal

    async def record_activity(self, candidate_id: str, *, page_id: str | None = None) -> Session:
        return await self._guarded_write("record_activity", candidate_id, page_id=page_id)

    async def tab_close(self, candidate_id: str, *, page_id: str | None = None) -> Session:
        return await self._guarded_write("record_tab_close", candidate_id, page_id=page_id)

    @retried_on_deadlock
    async def claim_page(
        self,
        candidate_id: str,
        page_id: str,
        *,
        user_agent: str | None = None,
        client_address: str | None = None,
    ) -> Claim:
        """A page opens the session: record its claim and make it the newest (with the policy
        `single`, every other page is superseded). Refused (SessionEnded) once it has ended."""
        async with transaction(self.pool) as cur:
            await self._act_on_workers(cur, "candidate")
            row = await self._fetch_one(
                cur,
                "claim_page",
                candidate_id=candidate_id,
                page_id=page_id,
                user_agent=user_agent,
                client_address=client_address,
            )
            if row is not None:
                return Claim(await self._settle(cur, candidate_id), int(row["superseded"]))
            refusal = await self._refusal(cur, candidate_id)
        raise refusal

    @retried_on_deadlock
    async def complete_section(
        self, candidate_id: str, section: str, *, page_id: str | None = None
    ) -> Session:
        """Mark a section completed; repeating it is harmless. A section outside the planned
        list (when the session has one) is refused."""
        refusal: InvigilatorError
        async with transaction(self.pool) as cur:
            await self._act_on_workers(cur, "candidate")
            row = await self._fetch_one(
                cur, "complete_section", candidate_id=candidate_id, section=section, page_id=page_id
            )
            if row is not None:
                return to_session(row)
            session = await self._settle(cur, candidate_id)
            if session.is_active:
                planned = session.planned_sections
                if section in session.sections_completed:
                    return session
                if planned is not None and section not in planned:
                    refusal = InvalidInput(
                        f"{section!r} is not one of this test's sections", sections=planned
                    )
                else:  # open and allowed: a newer page's claim, or the time is up
                    refusal = await self._refusal(cur, candidate_id, page_id)
            else:
                refusal = ended_error(session)
        raise refusal

    @retried_on_deadlock
    async def save_answers(
        self,
        candidate_id: str,
        answers: dict[str, Any],
        seq: int,
        *,
        max_total_bytes: int | None = None,
        page_id: str | None = None,
    ) -> SaveResult:
        """Upsert `answers` (question -> value) at `seq`. Returns only once committed; its cost
        follows what it writes, not what the session holds: one statement in its own
        transaction (autocommit), exact also when saves of one session race. Over the
        per-session limit the statement raises, so nothing of it commits. For each superseded
        question the result says what the server holds instead."""
        params = {
            **self._rules,
            "candidate_id": candidate_id,
            "answers": Jsonb(answers),
            "seq": seq,
            "max_total_bytes": max_total_bytes,
            "page_id": page_id,
        }
        current: dict[str, tuple[Any, int]] = {}
        superseded: list[str] = []
        async with autocommit(self.pool) as conn, conn.cursor(row_factory=dict_row) as cur:
            save = "save_answers_distributed" if await self._is_distributed(cur) else "save_answers"
            try:
                await cur.execute(Q[save], params)
            except pgerrors.CheckViolation as exc:
                if constraint_name(exc) != _ANSWERS_SIZE:
                    raise
                raise PayloadTooLarge(
                    f"the session's answers would exceed {max_total_bytes} bytes",
                    limit_bytes=max_total_bytes,
                ) from None
            row = await cur.fetchone()
            if row is not None:
                superseded = sorted(set(answers) - set(row["applied"]))
            if superseded:  # a later statement: it sees the newer save that won, committed
                await cur.execute(
                    Q["current_answers"], {"candidate_id": candidate_id, "questions": superseded}
                )
                current = {r["question"]: (r["value"], int(r["seq"])) for r in await cur.fetchall()}
        if row is None:
            async with transaction(self.pool) as tx:  # committed: lazy expiry's end stays
                refusal = await self._refusal(tx, candidate_id, page_id)
            raise refusal
        applied = sorted(row["applied"])
        clock = Clock(
            candidate_id,
            Status(row["status"]),
            row["deadline"],
            row["server_now"],
            row["paused_at"],
        )
        return SaveResult(
            clock=clock, seq=seq, applied=applied, superseded=superseded, current=current
        )

    async def _sync_answers(self, cur: Cursor, candidate_ids: list[Any]) -> None:
        """pending_answers mirrors the answer rows again for these sessions."""
        if candidate_ids:
            await cur.execute(Q["sync_answers"], {"candidate_ids": candidate_ids})

    @retried_on_deadlock
    async def sync_lagging_answers(self, limit: int) -> int:
        """Refresh pending_answers of up to `limit` sessions whose rows changed at least the
        policy's mirror delay ago; how many. Safe with many sweepers. One session per
        transaction: a refresh rewrites the session's row (a coding test's answers: up to a
        megabyte, recompressed), and a batch would keep every row it rewrote locked until the
        last one was done, with those sessions' heartbeats and saves waiting (seconds, in
        bench/answers.py's mixed scenario)."""
        done = 0
        while done < limit:
            async with transaction(self.pool) as cur:
                # The pick locks the session's row (no save in flight, none until the refresh
                # commits); on Citus, which refuses FOR UPDATE across shards, the pick is
                # unlocked (two sweepers may refresh one session: harmless, sync_answers
                # copies) and the row is locked after it.
                distributed = await self._is_distributed(cur)
                pick = "find_unsynced_unlocked" if distributed else "find_unsynced"
                await cur.execute(Q[pick], {"delay": self.policy.answers_mirror_delay, "limit": 1})
                ids = [row["candidate_id"] for row in await cur.fetchall()]
                if distributed and ids:
                    await cur.execute(Q["lock_for_sync"], {"candidate_id": ids[0]})
                await self._sync_answers(cur, ids)
            if not ids:
                break
            done += 1
        return done

    @retried_on_deadlock
    async def record_client_event(
        self,
        candidate_id: str,
        event_type: str,
        detail: dict[str, Any] | None = None,
        *,
        page_id: str | None = None,
    ) -> None:
        async with transaction(self.pool) as cur:
            row = await self._fetch_one(
                cur,
                "record_client_event",
                candidate_id=candidate_id,
                type=event_type,
                detail=Jsonb(detail or {}),
                page_id=page_id,
            )
            refusal = None if row is not None else await self._refusal(cur, candidate_id, page_id)
        if refusal is not None:
            raise refusal

    @retried_on_deadlock
    async def complete(
        self,
        candidate_id: str,
        method: Method = Method.MANUAL,
        *,
        actor: str = "candidate",
        reason: str | None = None,
        page_id: str | None = None,
    ) -> tuple[Session, bool]:
        """End the session now. `(session, True)` if this call ended it; `(stored, False)` if it
        had already ended — the first completion wins and is never moved — or, for the
        candidate, if it was reopened and its page has not been heard from since (a repeat of
        the earlier opening's submit). A page a newer one took over from is refused
        (PageSuperseded)."""
        async with transaction(self.pool) as cur:
            await self._act_on_workers(cur, actor, reason)
            row = await self._fetch_one(
                cur,
                "complete",
                candidate_id=candidate_id,
                method=method.value,
                actor=actor,
                reason=reason,
                page_id=page_id,
                by_candidate=actor == "candidate",
            )
            if row is not None:  # exactly at the end, pending_answers holds every answer
                await self._sync_answers(cur, [row["candidate_id"]])
                return await self._settle(cur, candidate_id), True
            stored = await self._settle(cur, candidate_id)
        if stored.is_active and page_id is not None:  # open, so the page claim refused it
            raise _superseded()
        return stored, False

    async def extend(
        self, candidate_id: str, minutes: int, *, actor: str = "staff", reason: str | None = None
    ) -> Session:
        if minutes < 1:
            raise InvalidInput("minutes must be at least 1")
        return await self._guarded_write(
            "extend_time", candidate_id, minutes=minutes, actor=actor, reason=reason
        )

    async def pause(self, candidate_id: str, *, actor: str, reason: str | None = None) -> Session:
        """Stop the clock of a running session (AlreadyPaused when it stands already)."""
        return await self._controlled("pause", candidate_id, AlreadyPaused, actor, reason)

    async def resume(self, candidate_id: str, *, actor: str, reason: str | None = None) -> Session:
        """Start a paused session's clock again (NotPaused when it runs)."""
        return await self._controlled("resume", candidate_id, NotPaused, actor, reason)

    @retried_on_deadlock
    async def _controlled(
        self,
        name: str,
        candidate_id: str,
        unchanged: type[InvigilatorError],
        actor: str,
        reason: str | None,
    ) -> Session:
        """A staff pause or resume; refused as `unchanged` when the session is running but
        already in the state asked for."""
        refusal: InvigilatorError
        async with transaction(self.pool) as cur:
            await self._act_on_workers(cur, actor, reason)
            row = await self._fetch_one(
                cur, name, candidate_id=candidate_id, actor=actor, reason=reason
            )
            if row is not None:
                return to_session(row)
            try:
                session = await self._settle(cur, candidate_id)
            except SessionNotFound as exc:
                refusal = exc
            else:
                refusal = (
                    unchanged(
                        f"this test session is {'paused' if session.is_paused else 'running'}",
                        paused_at=session.paused_at.isoformat() if session.paused_at else None,
                    )
                    if session.is_active
                    else ended_error(session)
                )
        raise refusal

    @retried_on_deadlock
    async def reopen(
        self, candidate_id: str, minutes: int, *, actor: str, reason: str | None = None
    ) -> Session:
        """Open an ended session again with `minutes` left, counted from when its page is next
        heard from. SessionNotEnded while it runs; SessionPurged after retention."""
        refusal: InvigilatorError
        async with transaction(self.pool) as cur:
            await self._act_on_workers(cur, actor, reason)
            row = await self._fetch_one(
                cur,
                "reopen",
                candidate_id=candidate_id,
                minutes=minutes,
                actor=actor,
                reason=reason,
            )
            if row is not None:
                return to_session(row)
            try:
                session = await self._settle(cur, candidate_id)
            except SessionNotFound as exc:
                refusal = exc
            else:
                if session.is_active:
                    refusal = SessionNotEnded("this test session is still running")
                else:
                    refusal = SessionPurged(
                        "retention removed this session's answers and timeline; it stays ended"
                    )
        raise refusal

    async def set_accommodations(
        self,
        candidate_id: str,
        *,
        time_multiplier: float | None,
        extra_minutes: int | None,
        actor: str,
        reason: str | None = None,
    ) -> Session:
        """Change a running session's accommodations; what is None is kept."""
        return await self._guarded_write(
            "set_accommodations",
            candidate_id,
            time_multiplier=time_multiplier,
            extra_minutes=extra_minutes,
            actor=actor,
            reason=reason,
        )

    @retried_on_deadlock
    async def record_incident(
        self, candidate_id: str, severity: Severity, reason_code: str, note: str, *, actor: str
    ) -> Incident:
        """Record an incident on a running or ended session. A due session is ended first
        (lazy expiry), so the session.flagged webhook shows it as it truly is."""
        async with transaction(self.pool) as cur:
            await self._finalize(cur, [candidate_id], "system")
            row = await self._fetch_one(
                cur,
                "record_incident",
                candidate_id=candidate_id,
                actor=actor,
                severity=severity.value,
                reason_code=reason_code,
                note=note,
            )
        if row is None:
            raise SessionNotFound(f"no test session for candidate {candidate_id!r}")
        return to_incident(row)

    @retried_on_deadlock
    async def finalize_due(self, limit: int, *, actor: str = "sweeper") -> list[Ended]:
        """End up to `limit` due sessions in one transaction; safe with many sweepers (each
        locks its pick, skipping rows another holds). On Citus, see `_finalize_due_sharded`."""
        async with transaction(self.pool) as cur:
            if await self._is_distributed(cur):
                ended = None
            else:
                await cur.execute(Q["find_due"], {**self._rules, "limit": limit})
                ids = [row["candidate_id"] for row in await cur.fetchall()]
                if not ids:
                    return []
                ended = await self._finalize(cur, ids, actor)
        if ended is None:
            ended = await self._finalize_due_sharded(limit, actor)
        return sorted(ended, key=lambda e: (e.completed_at, e.candidate_id))

    async def _finalize_due_sharded(self, limit: int, actor: str) -> list[Ended]:
        """The sweeper's batch on Citus, which refuses FOR UPDATE … SKIP LOCKED with LIMIT
        across shards: the pick is unlocked, so sweepers pick the same sessions, and the pick
        is ended one shard at a time, each shard's part in a transaction of its own. A batch
        over many shards at once locks each shard's rows in parallel, and two such batches (or
        one and a staff control) then wait on each other across nodes: distributed deadlocks,
        seen with four sweepers. One shard's part is one statement on one node; finalize's
        guard, under each row's lock, leaves a session another sweeper ended alone, so each
        ending stays exactly once. The shards go in a shuffled order (sweepers then rarely
        queue on the same rows), and the pick is taken again while peers ended part of it, so
        a batch comes back short only when nothing more is due, as with SKIP LOCKED."""
        ended: list[Ended] = []
        last: list[Any] = []
        while len(ended) < limit:
            async with transaction(self.pool) as cur:
                await cur.execute(
                    Q["find_due_unlocked"], {**self._rules, "limit": limit - len(ended)}
                )
                ids = [row["candidate_id"] for row in await cur.fetchall()]
                if not ids or ids == last:  # nothing due, or nothing of it could be ended
                    break
                await cur.execute(Q["shards_of"], {"candidate_ids": [str(i) for i in ids]})
                by_shard: dict[int, list[Any]] = {}
                for row, candidate_id in zip(await cur.fetchall(), ids, strict=True):
                    by_shard.setdefault(row["shard"], []).append(candidate_id)
            last = ids
            for shard in random.sample(sorted(by_shard), len(by_shard)):
                async with transaction(self.pool) as cur:
                    ended += await self._finalize(cur, by_shard[shard], actor)
        return ended

    async def find_active(self, limit: int = 1000) -> list[Session]:
        async with transaction(self.pool) as cur:
            await cur.execute(Q["find_active"], {"limit": limit})
            return [to_session(row) for row in await cur.fetchall()]

    async def find_abandoned(
        self, silent_for: timedelta | None = None, limit: int = 1000
    ) -> list[Session]:
        async with transaction(self.pool) as cur:
            await cur.execute(
                Q["find_abandoned"],
                {"silent_for": silent_for or self.policy.abandon_after, "limit": limit},
            )
            return [to_session(row) for row in await cur.fetchall()]

    async def list_sessions(
        self,
        *,
        status: Status | None = None,
        limit: int = 50,
        after: tuple[datetime, str] | None = None,
    ) -> list[Session]:
        async with transaction(self.pool) as cur:
            await cur.execute(
                Q["list_sessions"],
                {
                    "status": status.value if status else None,
                    "limit": limit,
                    "after_start": after[0] if after else None,
                    "after_id": after[1] if after else None,
                },
            )
            return [to_session(row) for row in await cur.fetchall()]

    async def select_sessions(
        self,
        *,
        status: Status | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
    ) -> list[str]:
        async with transaction(self.pool) as cur:
            await cur.execute(
                Q["select_sessions"],
                {
                    "status": status.value if status else None,
                    "since": since,
                    "until": until,
                    "limit": limit,
                },
            )
            return [row["candidate_id"] for row in await cur.fetchall()]

    async def events(self, candidate_id: str) -> list[Event]:
        async with transaction(self.pool) as cur:
            await cur.execute(Q["list_events"], {"candidate_id": candidate_id})
            rows = await cur.fetchall()
            if not rows:
                await self._settle(cur, candidate_id)  # raises SessionNotFound if none
        return [to_event(r) for r in rows]


def _superseded() -> PageSuperseded:
    return PageSuperseded(
        "this test was opened in another window; continue there, or open it here again"
    )


def _as_uuid(value: str) -> uuid.UUID | None:
    """A candidate id for a uuid-keyed table; None when it cannot name any session."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
