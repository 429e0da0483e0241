"""The connector: connection pools, transactions and the translation of PostgreSQL errors into
domain errors. The one module that knows SQLSTATEs and psycopg's pool; stores hold operations
only and reach the database through `transaction()` and `autocommit()`, each write once more
when the database chose it as a deadlock's victim (`retried_on_deadlock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from invigilator.config import Settings
from invigilator.domain import (
    CandidateNotFound,
    DatabaseUnavailable,
    InvalidInput,
    InvigilatorError,
    PayloadTooLarge,
    SchemaProblem,
)

Row = dict[str, Any]
Cursor = psycopg.AsyncCursor[Row]

UNAVAILABLE = "the database is unavailable; try again shortly"

P = ParamSpec("P")
T = TypeVar("T")


class Deadlocked(DatabaseUnavailable):
    """The database ended this transaction to break a deadlock (40P01): nothing of it was
    committed. A 503 if it happens again."""


def retried_on_deadlock(operation: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run a store operation (its transactions) once more if the database picked it as a
    deadlock's victim. On one server the service's lock orders leave none; on Citus a multi-shard
    statement (a sweeper's batch) locks each shard's rows in parallel and may wait in a cycle
    with a staff control or a submit (docs/scaling.md), and Citus cancels one of them. The
    victim was rolled back whole, so the second run starts afresh: its guards read the rows as
    the winner left them, and each ending stays exactly once."""

    @functools.wraps(operation)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await operation(*args, **kwargs)
        except Deadlocked:
            return await operation(*args, **kwargs)

    return run


#: What a CHECK violation means to a caller, by constraint name.
_CHECK_MESSAGES = {
    "test_session_duration_range": "test_duration_minutes must be between 1 and 1440",
    "test_session_extra_minutes_range": "extensions may add at most 1440 minutes in all",
    "test_session_sections_is_array": "sections_completed must be a JSON array",
    "test_session_answers_is_object": "pending_answers must be a JSON object",
    "test_session_planned_sections_is_array": "sections must be a list",
    "test_session_candidate_id_format": "candidate_id must be 1–36 of [A-Za-z0-9._:@+-], "
    "with a letter or digit",
    "test_session_names_format": "section names and answer keys must be 1–128 of "
    "[A-Za-z0-9._:@+-], with a letter or digit",
}


_CONSTRAINT_IN_MESSAGE = re.compile(r'constraint "([^"]+)"')
_SHARD_SUFFIX = re.compile(r"_\d+$")


def constraint_name(exc: psycopg.Error) -> str:
    """The constraint an error names. Citus relays a worker's error without `constraint_name`
    and with the shard's names in the message (`test_session_candidate_fk_102046` on
    `test_session_102046`): read it from the message then, without the shard number. None of
    our constraint names ends in a number."""
    if exc.diag.constraint_name:
        return exc.diag.constraint_name
    found = _CONSTRAINT_IN_MESSAGE.search(exc.diag.message_primary or "")
    return _SHARD_SUFFIX.sub("", found[1]) if found else ""


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Map PostgreSQL errors to domain errors, by constraint name or SQLSTATE. A pool that
    cannot hand out a connection in time (TimeoutError) is the database being unavailable."""
    try:
        yield
    except InvigilatorError:
        raise
    except TimeoutError as exc:  # pool exhausted or database unreachable
        raise DatabaseUnavailable(UNAVAILABLE) from exc
    except pgerrors.ForeignKeyViolation as exc:
        if constraint_name(exc) == "test_session_candidate_fk":
            raise CandidateNotFound(
                "no candidate with this candidate_id: create it in the host application first, "
                "or ask for it to be created (create_candidate)"
            ) from None
        raise InvalidInput("the request refers to something that does not exist") from None
    except pgerrors.CheckViolation as exc:
        name = constraint_name(exc)
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
        raise InvalidInput(first_line(exc)) from None
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
    except (pgerrors.UndefinedTable, pgerrors.UndefinedFunction) as exc:
        raise SchemaProblem(
            f"{first_line(exc)}: run `invigilator db upgrade` to bring the schema up to date"
        ) from None
    except pgerrors.DeadlockDetected as exc:  # a subclass of OperationalError too
        raise Deadlocked(UNAVAILABLE) from exc
    except pgerrors.QueryCanceled as exc:  # statement_timeout; a subclass of OperationalError
        raise DatabaseUnavailable("the database did not answer in time") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(UNAVAILABLE) from exc


def first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextlib.asynccontextmanager
async def transaction(pool: AsyncConnectionPool[Any]) -> AsyncIterator[Cursor]:
    """A cursor inside one transaction: committed on success, rolled back on error."""
    with translate_errors():
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            yield cur


@contextlib.asynccontextmanager
async def autocommit(pool: AsyncConnectionPool[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection in autocommit, each statement its own transaction: the heartbeat pool's
    connections are so already; one of the main pool is switched for the while."""
    with translate_errors():
        async with pool.connection() as conn:
            if conn.autocommit:
                yield conn
                return
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                # A broken connection cannot be switched back; the pool discards it.
                with contextlib.suppress(psycopg.Error):
                    await conn.set_autocommit(False)


def pool_for(
    conninfo: str,
    settings: Settings | None = None,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
) -> AsyncConnectionPool[Any]:
    """The main pool (opened by the caller). Sizes and timeouts come from the settings; tests
    and one-shot commands may ask for other sizes."""
    settings = settings or Settings()
    timeout = settings.db_connect_timeout_seconds
    statement_timeout_ms = settings.statement_timeout_ms

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
        min_size=settings.pool_min_size if min_size is None else min_size,
        max_size=settings.pool_max_size if max_size is None else max_size,
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


def heartbeat_pool_for(conninfo: str, settings: Settings | None = None) -> AsyncConnectionPool[Any]:
    """One connection for heartbeat batches only, so the hot path neither waits for nor
    starves the main pool:

    - autocommit: a batch is one statement, so one round trip, no separate COMMIT;
    - prepared from the first use, with a generic plan (on one server; not on Citus, which
      plans it its own way): the planner otherwise re-plans
      the batch statement for every array of ids (custom plans), which cost more CPU in
      PostgreSQL than executing a batch of ten (BENCHMARKS.md);
    - no liveness check before each batch (a round trip each): a batch that fails on a
      connection that died (a database restart) is written once more on a new one
      (HeartbeatBatcher).
    """
    settings = settings or Settings()
    timeout = settings.db_connect_timeout_seconds
    statement_timeout_ms = settings.statement_timeout_ms

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.prepare_threshold = 0
        await conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
        async with conn.cursor(row_factory=dict_row) as cur:
            distributed = await citus_distributed(cur)
        # Not on Citus: its planner cannot plan the batch's generic plan ("could not create
        # distributed plan"), and it keeps plans of its own for a prepared statement.
        if not distributed:
            await conn.execute("SET plan_cache_mode = force_generic_plan")

    return AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=1,
        timeout=timeout,
        kwargs={"connect_timeout": max(1, round(timeout)), "autocommit": True},
        configure=configure,
        reconnect_timeout=max(10.0, 2 * timeout),
        open=False,
        name="invigilator-heartbeats",
    )


async def citus_distributed(cur: Cursor) -> bool:
    """Whether `db distribute` has sharded test_session (Citus). pg_dist_partition exists only
    with the citus extension, hence two statements."""
    await cur.execute("SELECT to_regclass('pg_dist_partition') IS NOT NULL AS citus")
    row = await cur.fetchone()
    if not (row and row["citus"]):
        return False
    await cur.execute(
        "SELECT EXISTS (SELECT FROM pg_dist_partition"
        " WHERE logicalrelid = to_regclass('test_session')) AS distributed"
    )
    row = await cur.fetchone()
    return bool(row and row["distributed"])
