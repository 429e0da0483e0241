"""SQL shipped with the package: numbered migrations and the store's named queries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)
_INCLUDE = re.compile(r"^[ \t]*-- include: ([a-z_][a-z0-9_]*)[ \t]*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name --` blocks into {name: statement}.

    The line after the header is the block's description and, like every comment, is kept
    in the statement: PostgreSQL ignores it and it shows up in pg_stat_statements.

    A block whose name starts with `_` is a fragment, not a statement: a line
    `-- include: _name` in a later block stands for it. Two statements that differ in one
    part (a statement and its form for a distributed database) share the rest that way,
    written once.
    """
    parts = _HEADER.split(text)
    blocks: dict[str, str] = {}

    def fragment(match: re.Match[str]) -> str:
        name = match[1]
        if not name.startswith("_") or name not in blocks:
            raise ValueError(f"include of {name!r}, which is no fragment defined before it")
        return blocks[name]

    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = _INCLUDE.sub(fragment, body.strip()).rstrip(";")
    return {name: body for name, body in blocks.items() if not name.startswith("_")}


@cache
def queries() -> dict[str, str]:
    return parse_queries(resources.files(__name__).joinpath("queries.sql").read_text("utf-8"))


@cache
def analytics_queries() -> dict[str, str]:
    """The read-only named queries of `invigilator.analytics` (sql/analytics.sql)."""
    return parse_queries(resources.files(__name__).joinpath("analytics.sql").read_text("utf-8"))


@cache
def webhook_queries() -> dict[str, str]:
    """The named queries of the webhook outbox, `invigilator.webhooks` (sql/webhooks.sql)."""
    return parse_queries(resources.files(__name__).joinpath("webhooks.sql").read_text("utf-8"))


@cache
def privacy_queries() -> dict[str, str]:
    """Staff sign-outs, erasure and retention, `invigilator.privacy` (sql/privacy.sql)."""
    return parse_queries(resources.files(__name__).joinpath("privacy.sql").read_text("utf-8"))


@cache
def citus_queries() -> dict[str, str]:
    """The statements of `db distribute` on a Citus coordinator (sql/citus.sql)."""
    return parse_queries(resources.files(__name__).joinpath("citus.sql").read_text("utf-8"))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    found = []
    for entry in resources.files(__name__).joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("migrations must be numbered 0001, 0002, … without gaps")
    return tuple(found)


def candidate_prerequisite_sql() -> str:
    """The setup guide's prerequisite (a candidate table whose candidate_id test_session can
    reference) as migration 0001 checks it, in its first statement: `db upgrade`, `db check`
    and a psql user running the schema file all meet the same check and the same words."""
    first = migrations()[0].sql
    start = first.index("DO $$")
    return first[start : first.index("END $$;", start) + len("END $$;")]


def candidate_table_sql() -> str:
    return resources.files(__name__).joinpath("candidate.sql").read_text("utf-8")
