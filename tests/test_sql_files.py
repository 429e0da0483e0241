"""The named-query files: fragments included where a statement names them, never exposed."""

from __future__ import annotations

import pytest

from invigilator import sql

FILE = """\
-- _tail --
-- the shared part
  FROM t WHERE t.id = %(id)s;

-- locked --
-- one form
SELECT * FOR_SHARE_PLACEHOLDER
-- include: _tail

-- unlocked --
-- the other
SELECT *
-- include: _tail
"""


def test_a_fragment_stands_where_it_is_included_and_is_no_query_itself() -> None:
    queries = sql.parse_queries(FILE)
    assert set(queries) == {"locked", "unlocked"}
    assert queries["unlocked"].endswith(
        "SELECT *\n-- the shared part\n  FROM t WHERE t.id = %(id)s"
    )


@pytest.mark.parametrize("include", ["_missing", "locked"])
def test_an_include_of_no_fragment_defined_before_it_is_refused(include: str) -> None:
    with pytest.raises(ValueError, match="no fragment"):
        sql.parse_queries(FILE + f"\n-- more --\n-- x\nSELECT 1\n-- include: {include}\n")


def test_the_shipped_statements_that_share_a_part_share_it_exactly() -> None:
    queries, privacy = sql.queries(), sql.privacy_queries()
    tail = queries["save_answers"][queries["save_answers"].index("), saved AS (") :]
    assert queries["save_answers_distributed"].endswith(tail)
    locked, unlocked = privacy["purge_ended"], privacy["purge_ended_unlocked"]
    assert "FOR UPDATE SKIP LOCKED" in locked and "SKIP LOCKED" not in unlocked
    assert (
        locked.split("WITH due AS (", 1)[1].replace("       FOR UPDATE SKIP LOCKED\n", "")
        == (unlocked.split("WITH due AS (", 1)[1])
    )
