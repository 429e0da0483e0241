"""Security: secrets never leave (CLI output, logs, error bodies, the repository), keys come
from the environment or an owner-only file and are compared in constant time, pages send
security headers, and the staff cookie cannot be used cross-site (CSRF)."""

from __future__ import annotations

import json
import logging
import re
import stat
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.routing import APIRoute
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from invigilator.api import deps
from invigilator.api.headers import PAGE_CSP
from invigilator.config import Settings
from invigilator.secrets_file import load_or_create
from support.api import STAFF_KEY, Api, assert_problem, in_process_api, make_settings
from support.cli import run_cli

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Pw-" + uuid.uuid4().hex  # made at run time: never in the repository


def with_password(url: str, password: str = PASSWORD) -> str:
    """The same database, as a URL that carries a password (the embedded server trusts local
    socket connections, so it is accepted and ignored: a real connection is made). The port
    too: a server on another (a Citus coordinator's, over trusted TCP) is not on 5432."""
    params = conninfo_to_dict(url)
    port = f"&port={params['port']}" if params.get("port") else ""
    return (
        f"postgresql://{params.get('user', 'postgres')}:{password}@/{params['dbname']}"
        f"?host={params['host']}{port}"
    )


# --- the CLI never prints a password -------------------------------------------------------


def test_db_commands_never_print_the_password(db_url: str) -> None:
    reachable = with_password(db_url)
    unreachable = f"postgresql://invigilator:{PASSWORD}@127.0.0.1:1/exams?connect_timeout=3"
    keyword_form = make_conninfo(
        host="127.0.0.1", port=1, user="u", password=PASSWORD, dbname="x", connect_timeout=3
    )
    in_query = f"postgresql://127.0.0.1:1/x?user=u&password={PASSWORD}&connect_timeout=3"
    runs = {
        "check, reachable": (["db", "check", "--database-url", reachable], None),
        "check, unreachable": (["db", "check", "--database-url", unreachable], None),
        "check, key=value": (["db", "check", "--database-url", keyword_form], None),
        "check, ?password=": (["db", "check", "--database-url", in_query], None),
        "check, DATABASE_URL": (["db", "check"], {"DATABASE_URL": unreachable}),
        "verify, unreachable": (["db", "verify", "--database-url", unreachable], None),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = {name: pool.submit(run_cli, *args, env=env) for name, (args, env) in runs.items()}
    for name, future in done.items():
        result = future.result()
        output = result.stdout + result.stderr
        assert PASSWORD not in output, name
        assert "Traceback" not in output, (name, output)
        assert "****" in output or "%2A%2A%2A%2A" in output, (name, output)  # masked
    reachable_run = done["check, reachable"].result()
    assert reachable_run.returncode == 0, reachable_run.stdout + reachable_run.stderr
    for name in runs:
        if name != "check, reachable":
            assert done[name].result().returncode == 1, name


# --- logs and error bodies -----------------------------------------------------------------


async def test_logs_and_error_bodies_never_hold_passwords_tokens_or_answers(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = "ANSWER-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    async with in_process_api(with_password(db_url), make_settings()) as api:
        token = (await api.start("alice"))["token"]
        bob = (await api.start("bob"))["token"]
        ok = await api.as_candidate(
            "PATCH", "alice", "answers", token, json={"answers": {"q1": answer}, "seq": 1}
        )
        assert ok.status_code == 200
        header, payload, signature = token.split(".")
        failing = [
            await api.as_candidate("GET", "alice", "state", f"{header}.{payload}.x{signature}"),
            await api.as_candidate("GET", "alice", "state", bob),  # another candidate's token
            await api.as_candidate(  # invalid: NUL in the answer
                "PATCH",
                "alice",
                "answers",
                token,
                json={"answers": {"q1": answer + "\0"}, "seq": 2},
            ),
            await api.as_candidate(  # invalid: bad seq beside the answer
                "PATCH", "alice", "answers", token, json={"answers": {"q1": answer}, "seq": -5}
            ),
            await api.as_candidate(  # invalid: an answer where a section name goes
                "POST", "alice", "sections", token, json={"section": answer + "\n" + answer}
            ),
            await api.as_candidate(  # too large
                "PATCH", "alice", "answers", token, json={"answers": {"q1": answer * 200_000}}
            ),
            await api.client.post(  # a wrong staff key that looks like a token
                "/api/v1/sessions", json={"candidate_id": "x"}, headers=api.bearer(token)
            ),
        ]
        assert (await api.as_candidate("POST", "alice", "complete", token)).status_code == 200
        failing.append(  # a write after the end
            await api.as_candidate(
                "PATCH", "alice", "answers", token, json={"answers": {"q2": answer}, "seq": 3}
            )
        )
        for response in failing:
            assert 400 <= response.status_code < 500, response.text
            bodies.append(response.text)

    # The database unreachable, with the password in its URL: 503s, and warnings in the log.
    unreachable = f"postgresql://invigilator:{PASSWORD}@127.0.0.1:1/exams"
    settings = make_settings(db_connect_timeout_seconds=1)
    async with in_process_api(unreachable, settings) as api:
        for response in (
            await api.client.get("/readyz"),
            await api.as_candidate("POST", "alice", "heartbeat", token),
            await api.as_candidate(
                "PATCH", "alice", "answers", token, json={"answers": {"q1": answer}, "seq": 9}
            ),
        ):
            assert_problem(response, 503, "database_unavailable")
            bodies.append(response.text)

    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {json.dumps(r.__dict__, default=str)}"
        for r in caplog.records
    )
    assert "error connecting" in logged or "unavailable" in logged  # the outage was logged
    for secret in (PASSWORD, token, bob, signature, STAFF_KEY, answer):
        assert secret not in logged
        for body in bodies:
            assert secret not in body


# --- no credentials in the repository ------------------------------------------------------

#: Not credentials: placeholders (`<password>`, `{password}`, `${PGPASSWORD}`, `****`, `…`)
#: and the well-known fake passwords tests and docs use.
_PLACEHOLDER = re.compile(
    r"^(<[^>]*>|\{+[^}]*\}+|\$\{?\w+\}?|%\(\w+\)s|\*+|(%2A)+|x+|\.\.\.|…)$", re.IGNORECASE
)
FAKE_PASSWORDS = {"hunter2", "change-me", "changeme", "password", "secret", "example", "test"}
CREDENTIAL_PATTERNS = {
    "URL with a password": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"`]+:([^\s@/'\"`]+)@"),
    # key=value connection strings; a quoted literal, or a bare value that ends like one.
    "key=value password": re.compile(
        r"\bpassword\s*=\s*(?:'([^'\s]{4,})'|\"([^\"\s]{4,})\"|([^\s'\"&;,(){}\[\]]{4,})(?=[\s'\"&;]|$))",
        re.IGNORECASE | re.MULTILINE,
    ),
    "private key": re.compile(r"-----BEGIN ((?:[A-Z]+ )?PRIVATE KEY)-----"),
    "AWS access key id": re.compile(r"\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"),
    "AWS secret key": re.compile(
        r"aws_secret_access_key\s*[=:]\s*['\"]?([A-Za-z0-9/+=]{40})", re.IGNORECASE
    ),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,})\b"),
}


def find_credentials(text: str) -> list[str]:
    found = []
    for name, pattern in CREDENTIAL_PATTERNS.items():
        for match in pattern.finditer(text):
            secret = next(group for group in match.groups() if group)
            if _PLACEHOLDER.match(secret) or secret.lower() in FAKE_PASSWORDS:
                continue
            found.append(f"{name}: {match.group(0)[:60]}")
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    planted = [
        "postgresql://admin:" + "hunter2hunter2" + "@db.example.com/exams",
        "host=db user=u pass" + "word=Sup3rS3cret dbname=x",
        "PASS" + "WORD = 'Sup3rS3cret'",
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "aws_secret_access_key = " + "A" * 40,
    ]
    for text in planted:
        assert find_credentials(text), text
    for text in (
        "postgresql://<user>:<password>@<host>:5432/<database>",
        "postgresql://postgres:@/postgres?host=/tmp/x",
        f"postgresql://postgres:{{{PASSWORD!r}}}@/db",
        "postgresql://user:****@host/db",
        "postgresql://owner:…@host/db",
        "password = userinfo.partition(':')",
        "conninfo(password=PASSWORD, user=u)",
        "host=db password=hunter2 dbname=x",
    ):
        assert not find_credentials(text), text


def test_the_repository_holds_no_credentials() -> None:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    problems = []
    scanned = 0
    for name in filter(None, listed.split("\0")):
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        scanned += 1
        problems += [f"{name}: {hit}" for hit in find_credentials(data.decode("utf-8", "replace"))]
    assert scanned > 50
    assert problems == []


# --- keys: from the environment or an owner-only file, compared in constant time -----------


def test_keys_come_from_the_environment_and_are_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INVIGILATOR_SECRET_KEY", "env-secret-" + "s" * 24)
    monkeypatch.setenv("INVIGILATOR_ADMIN_KEYS", "env-key-one-0123456789,env-key-two-0123456789")
    settings = Settings()
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "env-secret-" + "s" * 24
    assert [k.get_secret_value() for k in settings.admin_keys] == [
        "env-key-one-0123456789",
        "env-key-two-0123456789",
    ]
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "env-secret" not in shown and "env-key" not in shown


def test_the_local_secrets_file_is_owner_only(tmp_path: Path) -> None:
    created = load_or_create(tmp_path / "data")
    assert created.created
    assert stat.S_IMODE(created.path.stat().st_mode) == 0o600
    again = load_or_create(tmp_path / "data")
    assert (again.created, again.secret_key, again.admin_key) == (
        False,
        created.secret_key,
        created.admin_key,
    )
    for loose in (0o644, 0o640, 0o604, 0o660):
        created.path.chmod(loose)
        with pytest.raises(PermissionError, match="chmod 600"):
            load_or_create(tmp_path / "data")
    created.path.chmod(0o600)
    assert load_or_create(tmp_path / "data").secret_key == created.secret_key


def test_staff_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared with hmac.compare_digest, even after a match: no early
    exit tells an attacker which key, or how much of one, was right."""
    calls: list[tuple[bytes, bytes]] = []
    real = deps.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", counting)
    keys = [b"first-key-0123456789", b"second-key-0123456789", b"third-key-0123456789"]
    runtime: Any = SimpleNamespace(admin_keys=keys)
    for presented in ("first-key-0123456789", "third-key-0123456789", "nope"):
        calls.clear()
        staff = deps.match_staff_key(presented, runtime)
        assert len(calls) == len(keys)
        assert (staff is None) == (presented == "nope")


# --- pages send security headers -----------------------------------------------------------


async def test_pages_send_security_headers(db_url: str) -> None:
    """Every HTML page the app serves (every GET route without parameters, and the static
    HTML) gets the CSP; /docs and /redoc send their own (their start-up script inline, by
    hash; everything from this origin). Every response
    gets nosniff, no-referrer and DENY framing."""
    async with in_process_api(db_url, make_settings(demo=True)) as api:
        paths = [
            route.path
            for route in api.app.routes
            if isinstance(route, APIRoute) and "GET" in route.methods and "{" not in route.path
        ] + ["/docs", "/redoc", "/openapi.json"]
        static_dir = REPO / "src" / "invigilator" / "static"
        paths += [f"/static/{p.name}" for p in static_dir.glob("*.html")]
        pages = 0
        for path in dict.fromkeys(paths):
            response = await api.client.get(path, headers=api.staff)
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["referrer-policy"] == "no-referrer", path
            assert response.headers["x-frame-options"] == "DENY", path
            if not response.headers.get("content-type", "").startswith("text/html"):
                continue
            if path in ("/docs", "/redoc"):  # their own CSP: this origin, one inline script
                csp = response.headers["content-security-policy"]
                scripts = csp.split("script-src ", 1)[1].split(";", 1)[0]
                assert scripts.startswith("'self'") and "unsafe" not in scripts, path
                assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
                continue
            pages += 1
            csp = response.headers["content-security-policy"]
            assert csp == PAGE_CSP, path
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert pages >= 1  # the demo page at least


# --- the staff cookie: flags, and CSRF -------------------------------------------------------


async def sign_in(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    """The dashboard's sign-in form, posted from the site's own page."""
    return await client.post(
        "/admin/login",
        data={"key": STAFF_KEY},
        headers={"Sec-Fetch-Site": "same-origin", **headers},
    )


async def staff_cookie(api: Api) -> dict[str, str]:
    response = await sign_in(api.client)
    assert response.status_code == 303, response.text
    value = response.cookies[deps.STAFF_COOKIE]
    assert STAFF_KEY not in value  # a signed stand-in, never the key itself
    return {"Cookie": f"{deps.STAFF_COOKIE}={value}"}


def cookie_flags(response: httpx.Response) -> set[str]:
    header = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith(deps.STAFF_COOKIE)
    )
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]} | {
        part.strip().lower() for part in header.split(";")[1:] if "samesite" in part.lower()
    }


async def test_the_staff_cookie_is_httponly_strict_and_secure_over_https(db_url: str) -> None:
    for base_url, secure in (("http://testserver", False), ("https://testserver", True)):
        async with in_process_api(db_url, base_url=base_url) as api:
            flags = cookie_flags(await sign_in(api.client))
            assert {"httponly", "samesite=strict"} <= flags, flags
            assert ("secure" in flags) is secure, (base_url, flags)
            # Signing in from another site sets nothing (no login CSRF).
            refused = await sign_in(api.client, **{"Sec-Fetch-Site": "cross-site"})
            assert deps.STAFF_COOKIE not in refused.cookies


CROSS_SITE = [
    {},  # no Origin, no Sec-Fetch-Site: not our page
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another origin
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://testserver.evil.example"},
]
SAME_ORIGIN = [
    {"Sec-Fetch-Site": "same-origin"},
    {"Origin": "http://testserver"},
    {"Origin": "https://testserver"},  # behind a TLS-terminating proxy
]


@pytest.mark.parametrize("headers", CROSS_SITE, ids=lambda h: str(h) or "no headers")
async def test_cookie_authenticated_staff_changes_from_elsewhere_are_refused(
    api: Api, db: psycopg.Connection[Any], headers: dict[str, str]
) -> None:
    await api.start("alice")
    cookie = await staff_cookie(api)
    for method, path, body in (
        ("POST", "/api/v1/sessions", {"candidate_id": "victim", "create_candidate": True}),
        ("POST", "/api/v1/sessions/alice/extend", {"minutes": 30}),
        ("POST", "/api/v1/sessions/alice/end", {"outcome": "terminate"}),
    ):
        response = await api.client.request(method, path, json=body, headers={**cookie, **headers})
        body_out = assert_problem(response, 403, "forbidden")
        assert body_out["reason"] == "cross_site_request"
    rows = db.execute("SELECT candidate_id, status, extra_minutes FROM test_session").fetchall()
    assert rows == [("alice", "active", 0)]
    # Reads are safe methods (and the browser will not let another site read the answer).
    assert (await api.client.get("/api/v1/sessions", headers={**cookie, **headers})).is_success


@pytest.mark.parametrize("headers", SAME_ORIGIN, ids=str)
async def test_cookie_authenticated_staff_changes_from_our_pages_work(
    api: Api, headers: dict[str, str]
) -> None:
    await api.start("alice")
    cookie = await staff_cookie(api)
    response = await api.client.post(
        "/api/v1/sessions/alice/extend", json={"minutes": 5}, headers={**cookie, **headers}
    )
    assert response.status_code == 200, response.text


async def test_bearer_keys_need_no_origin(api: Api) -> None:
    """A bearer key is not ambient: a browser never attaches it by itself, so no CSRF."""
    await api.start("alice")
    response = await api.client.post(
        "/api/v1/sessions/alice/extend",
        json={"minutes": 5},
        headers={**api.staff, "Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 200


async def test_a_forged_cookie_is_401(api: Api) -> None:
    for forged in ("wrong", STAFF_KEY):  # the raw key is not a sign-in either
        response = await api.client.post(
            "/api/v1/sessions",
            json={"candidate_id": "x"},
            headers={"Cookie": f"{deps.STAFF_COOKIE}={forged}", "Sec-Fetch-Site": "same-origin"},
        )
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")


def test_settings_secret_types() -> None:
    """Every credential setting is a SecretStr (masked in any repr, log or dump)."""
    settings = make_settings(database_url=SecretStr("postgresql://u:" + PASSWORD + "@h/db"))
    assert PASSWORD not in repr(settings)
    for name, field in Settings.model_fields.items():
        if any(word in name for word in ("secret", "key", "password", "database_url")):
            assert "SecretStr" in str(field.annotation), name
