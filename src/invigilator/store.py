"""SessionStore: one method per named query, over a psycopg 3 async pool.

No business rules beyond what the SQL enforces atomically. PostgreSQL errors become domain
errors here, by constraint name or SQLSTATE, so callers never see a psycopg exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg.types.string import StrDumper
from psycopg_pool import AsyncConnectionPool

from invigilator import sql
from invigilator.domain import (
    CandidateNotFound,
    Clock,
    DatabaseUnavailable,
    Ended,
    Event,
    InvalidInput,
    InvigilatorError,
    Method,
    PayloadTooLarge,
    Policy,
    SaveResult,
    SchemaProblem,
    Session,
    SessionAlreadyEnded,
    SessionEnded,
    SessionNotFound,
    Status,
)

Row = dict[str, Any]
Q = sql.queries()

#: What a CHECK violation means to a caller, by constraint name.
_CHECK_MESSAGES = {
    "test_session_duration_range": "test_duration_minutes must be between 1 and 1440",
    "test_session_extra_minutes_range": "extensions may add at most 1440 minutes in all",
    "test_session_sections_is_array": "sections_completed must be a JSON array",
    "test_session_answers_is_object": "pending_answers must be a JSON object",
    "test_session_planned_sections_is_array": "sections must be a list",
}


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Map PostgreSQL errors to domain errors (the one place that knows SQLSTATEs)."""
    try:
        yield
    except InvigilatorError:
        raise
    except pgerrors.ForeignKeyViolation as exc:
        if exc.diag.constraint_name == "test_session_candidate_fk":
            raise CandidateNotFound(
                "no candidate with this candidate_id: create it in the host application first, "
                "or ask for it to be created (create_candidate)"
            ) from None
        raise InvalidInput("the request refers to something that does not exist") from None
    except pgerrors.CheckViolation as exc:
        name = exc.diag.constraint_name or ""
        raise InvalidInput(_CHECK_MESSAGES.get(name, f"rejected by {name}")) from None
    except pgerrors.NotNullViolation as exc:
        if exc.diag.table_name == "candidate":
            raise SchemaProblem(
                "the host application's candidate table needs more than a candidate_id to "
                f"create a row (column {exc.diag.column_name} is required); create the "
                "candidate there first"
            ) from None
        raise InvalidInput(f"{exc.diag.column_name} is required") from None
    except (
        pgerrors.StringDataRightTruncation,
        pgerrors.InvalidTextRepresentation,
        pgerrors.NumericValueOutOfRange,  # e.g. an id past bigint in a query parameter
    ) as exc:
        raise InvalidInput(_first_line(exc)) from None
    except (pgerrors.UntranslatableCharacter, pgerrors.CharacterNotInRepertoire) as exc:
        raise InvalidInput("text contains a character PostgreSQL cannot store (\\u0000)") from exc
    except psycopg.DataError as exc:
        if exc.sqlstate is None:  # refused by psycopg before sending: a NUL in a text parameter
            raise InvalidInput(
                "text contains a character PostgreSQL cannot store (\\u0000)"
            ) from None
        raise
    except pgerrors.ProgramLimitExceeded:
        raise PayloadTooLarge("the value is too large or too deeply nested to store") from None
    except pgerrors.UndefinedTable as exc:
        raise SchemaProblem(
            f"{_first_line(exc)}: run `invigilator db upgrade` to create the schema"
        ) from None
    except pgerrors.QueryCanceled as exc:  # statement_timeout; a subclass of OperationalError
        raise DatabaseUnavailable("the database did not answer in time") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable("the database is unavailable; try again shortly") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def to_session(row: Row) -> Session:
    method = row["completion_method"]
    return Session(
        candidate_id=str(row["candidate_id"]),
        status=Status(row["status"]),
        completion_method=Method(method) if method else None,
        test_start_time=row["test_start_time"],
        test_duration_minutes=row["test_duration_minutes"],
        extra_minutes=row["extra_minutes"],
        deadline=row["deadline"],
        last_heartbeat=row["last_heartbeat"],
        last_activity=row["last_activity"],
        completed_at=row["completed_at"],
        tab_closed_at=row["tab_closed_at"],
        sections_completed=list(row["sections_completed"]),
        planned_sections=row["planned_sections"],
        pending_answers=dict(row["pending_answers"]),
        answer_seq={k: int(v) for k, v in row["answer_seq"].items()},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        server_now=row["server_now"],
    )


def _ended(row: Row) -> Ended:
    return Ended(
        candidate_id=str(row["candidate_id"]),
        status=Status(row["status"]),
        completion_method=Method(row["completion_method"]),
        completed_at=row["completed_at"],
    )


class SessionStore:
    """The test_session table, one atomic operation per method, on the database clock."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        policy: Policy | None = None,
        *,
        heartbeat_pool: AsyncConnectionPool[Any] | None = None,
    ) -> None:
        self.pool = pool
        self.heartbeat_pool = heartbeat_pool  # see heartbeat_pool_for; else `pool` serves
        self.policy = policy or Policy()
        self._rules = self.policy.sql_params()
        self._uuid_keys: bool | None = None  # learnt once: does candidate_id have type uuid?

    @classmethod
    def pool_for(
        cls,
        conninfo: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 5.0,
        statement_timeout_ms: int = 10_000,
    ) -> AsyncConnectionPool[Any]:
        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            # A hung statement must not pin a pooled connection forever (RELIABILITY.md).
            await conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
            await conn.commit()

        rechecks: set[asyncio.Task[None]] = set()

        async def recheck() -> None:
            with contextlib.suppress(Exception):
                await pool.check()

        async def check(conn: psycopg.AsyncConnection[Any]) -> None:
            # A database restart kills every pooled connection. Each one is checked before it
            # is handed out (one empty round trip), and the first dead one found has the pool
            # check all the others at once, so no request after a restart is the one to find
            # out (RELIABILITY.md, "database restart").
            try:
                await AsyncConnectionPool.check_connection(conn)
            except Exception:
                if not rechecks:
                    task = asyncio.get_running_loop().create_task(recheck())
                    rechecks.add(task)
                    task.add_done_callback(rechecks.discard)
                raise

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"connect_timeout": max(1, round(timeout))},
            configure=configure,
            check=check,
            # Give up on a lost connection's backoff (1 s, 2 s, 4 s…) soon: the pool then
            # reconnects at once on the next request, instead of one retry up to minutes late.
            reconnect_timeout=max(10.0, 2 * timeout),
            open=False,
            name="invigilator",
        )
        return pool

    @classmethod
    def heartbeat_pool_for(
        cls,
        conninfo: str,
        *,
        size: int = 1,
        timeout: float = 5.0,
        statement_timeout_ms: int = 10_000,
    ) -> AsyncConnectionPool[Any]:
        """Connections for heartbeat batches only, so the hot path neither waits for nor
        starves the main pool:

        - autocommit: a batch is one statement, so one round trip, no separate COMMIT;
        - prepared from the first use, with a generic plan: the planner otherwise re-plans
          the batch statement for every array of ids (custom plans), which cost more CPU in
          PostgreSQL than executing a batch of ten (BENCHMARKS.md);
        - no liveness check before each batch (a round trip each): a batch that fails on a
          connection that died (a database restart) is written once more on a new one
          (HeartbeatBatcher).
        """

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            conn.prepare_threshold = 0
            await conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
            await conn.execute("SET plan_cache_mode = force_generic_plan")

        return AsyncConnectionPool(
            conninfo,
            min_size=size,
            max_size=size,
            timeout=timeout,
            kwargs={"connect_timeout": max(1, round(timeout)), "autocommit": True},
            configure=configure,
            reconnect_timeout=max(10.0, 2 * timeout),
            open=False,
            name="invigilator-heartbeats",
        )

    # --- plumbing -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _cursor(self) -> AsyncIterator[psycopg.AsyncCursor[Row]]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        with translate_errors():
            try:
                async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    yield cur
            except TimeoutError as exc:  # pool exhausted or unreachable
                raise DatabaseUnavailable("the database is unavailable; try again shortly") from exc

    async def _fetch_one(
        self, cur: psycopg.AsyncCursor[Row], name: str, **params: Any
    ) -> Row | None:
        await cur.execute(Q[name], {**self._rules, **params})
        return await cur.fetchone()

    async def _settle(self, cur: psycopg.AsyncCursor[Row], candidate_id: str) -> Session:
        """Finalize the session if it is due, then return it as stored (lazy expiry)."""
        await cur.execute(Q["finalize_one"], {**self._rules, "candidate_id": candidate_id})
        row = await self._fetch_one(cur, "get_session", candidate_id=candidate_id)
        if row is None:
            raise SessionNotFound(f"no test session for candidate {candidate_id!r}")
        return to_session(row)

    @staticmethod
    def _ended_error(session: Session) -> SessionEnded:
        return SessionEnded(
            "this test session has ended",
            session_status=session.status.value,
            completion_method=session.completion_method.value
            if session.completion_method
            else None,
            completed_at=session.completed_at.isoformat() if session.completed_at else None,
        )

    async def _guarded_write(self, name: str, candidate_id: str, **params: Any) -> Session:
        """Run a write guarded by "active and not due"; explain a refusal, committing any
        finalization lazy expiry made on the way."""
        refusal: InvigilatorError | None = None
        async with self._cursor() as cur:
            row = await self._fetch_one(cur, name, candidate_id=candidate_id, **params)
            if row is not None:
                return to_session(row)
            try:
                refusal = self._ended_error(await self._settle(cur, candidate_id))
            except SessionNotFound as exc:
                refusal = exc
        raise refusal

    # --- operations -----------------------------------------------------------------------

    async def start(
        self,
        candidate_id: str,
        *,
        duration_minutes: int = 60,
        planned_sections: list[str] | None = None,
        create_candidate: bool = False,
        actor: str = "system",
    ) -> tuple[Session, bool]:
        """Start a session; `(session, True)` when created, `(existing, False)` when the candidate
        already has an active one. Refused (SessionAlreadyEnded) when theirs has ended."""
        async with self._cursor() as cur:
            if create_candidate:
                await cur.execute(Q["create_candidate"], {"candidate_id": candidate_id})
            row = await self._fetch_one(
                cur,
                "start_session",
                candidate_id=candidate_id,
                duration_minutes=duration_minutes,
                planned_sections=Jsonb(planned_sections) if planned_sections is not None else None,
                actor=actor,
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
        async with self._cursor() as cur:
            return await self._settle(cur, candidate_id)

    async def heartbeat(self, candidate_id: str, *, active: bool = False) -> Session:
        return await self._guarded_write("heartbeat", candidate_id, active=active)

    @contextlib.asynccontextmanager
    async def heartbeat_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for a run of heartbeat batches, in autocommit: from the heartbeat pool
        when there is one, else from the main pool. Under load the batches of a run follow
        each other on it: one checkout for many batches."""
        with translate_errors():
            try:
                if self.heartbeat_pool is not None:
                    async with self.heartbeat_pool.connection() as conn:
                        yield conn
                    return
                async with self.pool.connection() as conn:
                    await conn.set_autocommit(True)
                    try:
                        yield conn
                    finally:
                        # A broken connection cannot be switched back; the pool discards it.
                        with contextlib.suppress(psycopg.Error):
                            await conn.set_autocommit(False)
            except TimeoutError as exc:  # pool exhausted or unreachable
                raise DatabaseUnavailable("the database is unavailable; try again shortly") from exc

    async def heartbeat_batch(
        self, beats: dict[str, bool], conn: psycopg.AsyncConnection[Any] | None = None
    ) -> dict[str, Clock]:
        """Heartbeats for many sessions in one statement (and one commit): {candidate_id: active}.

        Returns the clock of every session that took its heartbeat. A session missing from the
        result was refused (ended, due or unknown): `heartbeat()` explains which. `conn`: one
        from `heartbeat_connection()`; without it, one is checked out for this batch.
        """
        if not beats:
            return {}
        if conn is None:
            async with self.heartbeat_connection() as held:
                return await self.heartbeat_batch(beats, held)
        with translate_errors():
            async with conn.cursor(row_factory=dict_row) as cur:
                if self._uuid_keys is None:
                    await cur.execute(
                        "SELECT atttypid = 'uuid'::regtype AS is_uuid FROM pg_attribute "
                        "WHERE attrelid = 'test_session'::regclass AND attname = 'candidate_id'"
                    )
                    row = await cur.fetchone()
                    self._uuid_keys = bool(row and row["is_uuid"])
                # The caller's spelling of each id, by the database's (uuids come back canonical).
                spelled: dict[str, str] = {}
                ids: list[Any] = []
                active: list[bool] = []
                for given, is_active in beats.items():
                    key: Any = _as_uuid(given) if self._uuid_keys else given
                    if key is None:
                        continue  # not a uuid: no such session; heartbeat() will say so
                    spelled[str(key)] = given
                    ids.append(key)
                    active.append(is_active)
                if not ids:
                    return {}
                if not self._uuid_keys:
                    # A list of str would go as unknown[]; unnest() needs to know it is text[].
                    cur.adapters.register_dumper(str, StrDumper)
                await cur.execute(
                    Q["heartbeat_batch"], {**self._rules, "candidate_ids": ids, "active": active}
                )
                rows = await cur.fetchall()
        clocks = {}
        for r in rows:
            given = spelled[str(r["candidate_id"])]
            clocks[given] = Clock(
                candidate_id=given,
                status=Status(r["status"]),
                deadline=r["deadline"],
                server_now=r["server_now"],
            )
        return clocks

    async def record_activity(self, candidate_id: str) -> Session:
        return await self._guarded_write("record_activity", candidate_id)

    async def tab_close(self, candidate_id: str) -> Session:
        return await self._guarded_write("record_tab_close", candidate_id)

    async def complete_section(self, candidate_id: str, section: str) -> Session:
        """Mark a section completed; repeating it is harmless. A section outside the planned
        list (when the session has one) is refused."""
        refusal: InvigilatorError
        async with self._cursor() as cur:
            row = await self._fetch_one(
                cur, "complete_section", candidate_id=candidate_id, section=section
            )
            if row is not None:
                return to_session(row)
            session = await self._settle(cur, candidate_id)
            if session.is_active:
                if section in session.sections_completed:
                    return session
                refusal = InvalidInput(
                    f"{section!r} is not one of this test's sections",
                    sections=session.planned_sections,
                )
            else:
                refusal = self._ended_error(session)
        raise refusal

    async def save_answers(
        self,
        candidate_id: str,
        answers: dict[str, Any],
        seq: int,
        *,
        max_total_bytes: int | None = None,
    ) -> SaveResult:
        """Merge `answers` (question -> value) at `seq`. Returns only once committed."""
        refusal: InvigilatorError | None = None
        async with self._cursor() as cur:
            row = await self._fetch_one(
                cur, "save_answers", candidate_id=candidate_id, answers=Jsonb(answers), seq=seq
            )
            if row is None:
                try:
                    refusal = self._ended_error(await self._settle(cur, candidate_id))
                except SessionNotFound as exc:
                    refusal = exc
            elif max_total_bytes is not None and row["answers_bytes"] > max_total_bytes:
                # Raising inside the transaction rolls the merge back: nothing changes.
                raise PayloadTooLarge(
                    f"pending_answers would exceed {max_total_bytes} bytes",
                    limit_bytes=max_total_bytes,
                )
        if refusal is not None or row is None:
            raise refusal or SessionNotFound(candidate_id)
        session = to_session(row)
        applied = sorted(k for k in answers if session.answer_seq.get(k) == seq)
        superseded = sorted(k for k in answers if session.answer_seq.get(k, -1) > seq)
        return SaveResult(session=session, seq=seq, applied=applied, superseded=superseded)

    async def record_client_event(
        self, candidate_id: str, event_type: str, detail: dict[str, Any] | None = None
    ) -> None:
        refusal: InvigilatorError | None = None
        async with self._cursor() as cur:
            row = await self._fetch_one(
                cur,
                "record_client_event",
                candidate_id=candidate_id,
                type=event_type,
                detail=Jsonb(detail or {}),
            )
            if row is None:
                try:
                    refusal = self._ended_error(await self._settle(cur, candidate_id))
                except SessionNotFound as exc:
                    refusal = exc
        if refusal is not None:
            raise refusal

    async def complete(
        self,
        candidate_id: str,
        method: Method = Method.MANUAL,
        *,
        actor: str = "candidate",
        reason: str | None = None,
    ) -> tuple[Session, bool]:
        """End the session now. `(session, True)` if this call ended it; `(stored, False)` if it
        had already ended — the first completion wins and is never moved."""
        status = Status.ABANDONED if method is Method.ADMIN_TERMINATED else Status.COMPLETED
        async with self._cursor() as cur:
            row = await self._fetch_one(
                cur,
                "complete",
                candidate_id=candidate_id,
                status=status.value,
                method=method.value,
                actor=actor,
                reason=reason,
            )
            if row is not None:
                return to_session(row), True
            stored = await self._settle(cur, candidate_id)
        return stored, False

    async def extend(
        self, candidate_id: str, minutes: int, *, actor: str = "staff", reason: str | None = None
    ) -> Session:
        if minutes < 1:
            raise InvalidInput("minutes must be at least 1")
        return await self._guarded_write(
            "extend_time", candidate_id, minutes=minutes, actor=actor, reason=reason
        )

    async def finalize_due(self, limit: int = 500) -> list[Ended]:
        """End up to `limit` due sessions in one transaction; safe with many sweepers."""
        async with self._cursor() as cur:
            await cur.execute(Q["finalize_due"], {**self._rules, "limit": limit})
            return [_ended(row) for row in await cur.fetchall()]

    async def find_active(self, limit: int = 1000) -> list[Session]:
        async with self._cursor() as cur:
            await cur.execute(Q["find_active"], {"limit": limit})
            return [to_session(row) for row in await cur.fetchall()]

    async def find_abandoned(
        self, silent_for: timedelta | None = None, limit: int = 1000
    ) -> list[Session]:
        async with self._cursor() as cur:
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
        async with self._cursor() as cur:
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

    async def events(self, candidate_id: str) -> list[Event]:
        async with self._cursor() as cur:
            await cur.execute(Q["list_events"], {"candidate_id": candidate_id})
            rows = await cur.fetchall()
            if not rows:
                await self._settle(cur, candidate_id)  # raises SessionNotFound if none
        return [
            Event(
                id=r["id"],
                candidate_id=str(r["candidate_id"]),
                type=r["type"],
                at=r["at"],
                actor=r["actor"],
                detail=r["detail"],
            )
            for r in rows
        ]


def _as_uuid(value: str) -> uuid.UUID | None:
    """A candidate id for a uuid-keyed table; None when it cannot name any session."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
