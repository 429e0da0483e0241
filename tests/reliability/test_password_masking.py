"""A database password is masked whatever characters it holds (issue 16): `#`, `?`, `@`, `%`
and `/`, unescaped as people paste them, in the CLI's banner, `db check`, `db verify` and the
service's log."""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from faults import report
from psycopg.conninfo import conninfo_to_dict

from invigilator.db.url import mask_url, scrub
from invigilator.logs import JsonFormatter, TextFormatter
from support.api import in_process_api, make_settings
from support.cli import run_cli


def hostile_password(special: str) -> str:
    """A fresh password around `special`; every piece between delimiters is long enough that
    finding it in an output means the password leaked."""
    return f"Pw{secrets.token_hex(4)}{special}Zq{secrets.token_hex(4)}"


SPECIALS = ["#", "?", "@", "%", "/", "%2F", "#?@%/", "@@", ":", " #"]


def spellings(password: str) -> list[str]:
    """What must never appear: the password, and each half of it around the special part."""
    head = password[:10]
    tail = password[-10:]
    return [password, head, tail]


def url_forms(password: str, host: str = "127.0.0.1:1") -> list[str]:
    return [
        f"postgresql://invigilator:{password}@{host}/exams",
        f"postgres://invigilator:{password}@{host}/exams?sslmode=disable&connect_timeout=3",
        f"postgresql://{host}/exams?user=u&password={password}&connect_timeout=3",
        f"postgresql://{host}/exams?password={password}",
        f"host=127.0.0.1 port=1 user=u password='{password}' dbname=x",
    ]


@pytest.mark.parametrize("special", SPECIALS)
def test_mask_url_and_scrub_hide_every_spelling(special: str) -> None:
    password = hostile_password(special)
    for url in url_forms(password):
        if " " in special and "password='" not in url:
            continue  # a space ends a key=value or URL token: not a URL people can write
        shown = mask_url(url)
        assert "****" in shown, url
        for spelling in spellings(password):
            assert spelling not in shown, (url, shown)
        # error messages quote pieces of a misparsed URL (as a host or a database name)
        message = (
            f'could not translate host name "{password.split(special)[-1]}@127.0.0.1": '
            f'failed; invalid percent-encoded token: "{password}" in {url}'
        )
        scrubbed = scrub(message, url)
        for spelling in spellings(password):
            assert spelling not in scrubbed, (url, scrubbed)


def test_masking_keeps_what_is_not_a_password() -> None:
    assert mask_url("postgresql://u@h:5432/db") == "postgresql://u@h:5432/db"
    assert mask_url("postgresql://h/db?application_name=a@b") == (
        "postgresql://h/db?application_name=a@b"
    )
    for password in ("p#w", "p@w", "p/w?x"):
        assert mask_url(f"postgresql://u:{password}@h/db") == "postgresql://u:****@h/db"


def test_cli_commands_never_print_a_hostile_password(db_url: str) -> None:
    """Against the test server (which trusts local socket connections, so any password is
    accepted and a real connection made when the URL parses) and an unreachable one."""
    params = conninfo_to_dict(db_url)
    runs: dict[str, tuple[list[str], dict[str, str] | None, str]] = {}
    # Each special character alone is masked by the unit tests above; here the commands' wiring,
    # with the two libpq takes unescaped (so a connection is made) and all of them at once.
    for special in ["#", "?", "#?@%/"]:
        password = hostile_password(special)
        reachable = (
            f"postgresql://{params.get('user', 'postgres')}:{password}@/{params['dbname']}"
            f"?host={params['host']}" + (f"&port={params['port']}" if params.get("port") else "")
        )
        unreachable = f"postgresql://invigilator:{password}@127.0.0.1:1/exams?connect_timeout=3"
        runs[f"check reachable {special}"] = (
            ["db", "check", "--database-url", reachable],
            None,
            password,
        )
        runs[f"check unreachable {special}"] = (
            ["db", "check", "--database-url", unreachable],
            None,
            password,
        )
        runs[f"DATABASE_URL {special}"] = (["db", "check"], {"DATABASE_URL": unreachable}, password)
        runs[f"verify {special}"] = (["db", "verify", "--database-url", reachable], None, password)
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = {
            name: pool.submit(run_cli, *args, env=env, timeout=60)
            for name, (args, env, _) in runs.items()
        }
    connected = 0
    for name, future in done.items():
        result = future.result()
        output = result.stdout + result.stderr
        password = runs[name][2]
        for spelling in spellings(password):
            assert spelling not in output, (name, output)
        assert "Traceback" not in output, (name, output)
        assert "****" in output, (name, output)
        connected += name.startswith("check reachable") and result.returncode == 0
    report("password_masking_cli", runs=len(runs), connected_with_unescaped_password=connected)
    assert connected >= 2  # `#` and `?` unescaped: libpq takes them, and the check passed


@pytest.mark.parametrize("special", ["#", "?", "@", "%", "/"])
async def test_the_service_log_never_holds_a_hostile_password(
    special: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = hostile_password(special)
    url = f"postgresql://invigilator:{password}@127.0.0.1:1/exams"
    caplog.set_level(logging.DEBUG)
    async with in_process_api(url, make_settings(db_connect_timeout_seconds=1)) as api:
        assert (await api.client.get("/readyz")).status_code == 503
    formatted: list[str] = []
    for formatter in (JsonFormatter(), TextFormatter()):
        formatted += [formatter.format(record) for record in caplog.records]
    logged = "\n".join(formatted)
    assert logged  # the outage was logged
    for spelling in spellings(password):
        assert spelling not in logged, logged[:2000]
