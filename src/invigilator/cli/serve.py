"""`invigilator serve` and `invigilator demo`: the HTTP service (uvicorn)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

import psycopg
import typer
from pydantic import SecretStr

from invigilator.cli.app import app, database, err, fail, out
from invigilator.cli.options import CreateCandidate, DatabaseUrl
from invigilator.config import Settings
from invigilator.db import migrate
from invigilator.domain import InvigilatorError
from invigilator.secrets_file import load_or_create

Host = Annotated[str, typer.Option(help="Interface to listen on.")]
Port = Annotated[int, typer.Option(help="TCP port.")]


def prepare(
    database_url: str | None, create_candidate_table: bool, demo: bool | None
) -> tuple[Settings, str, bool]:
    """Choose the database, migrate it, make sure there are credentials. Returns the settings
    to serve with, the database URL and whether the demo is on."""
    settings = Settings()
    db = database(database_url, settings)
    try:
        migrate.upgrade(db.url, create_candidate_table=create_candidate_table or db.embedded)
    except InvigilatorError as exc:
        raise fail(exc.message, db) from None
    except psycopg.Error as exc:
        raise fail(str(exc), db) from None
    if settings.secret_key is None or not settings.admin_keys:
        local = load_or_create(settings.data_dir)
        err.print(
            "[yellow]warning:[/yellow] INVIGILATOR_SECRET_KEY / INVIGILATOR_ADMIN_KEYS are not "
            f"set; using local-only credentials from {local.path}. Set both for any real use.",
            highlight=False,
        )
        if local.created:
            out.print(f"staff (admin) key, shown this once: [bold]{local.admin_key}[/bold]")
        updates: dict[str, object] = {}
        if settings.secret_key is None:
            updates["secret_key"] = SecretStr(local.secret_key)
        if not settings.admin_keys:
            updates["admin_keys"] = [SecretStr(local.admin_key)]
        settings = settings.model_copy(update=updates)
    demo_on = (
        demo if demo is not None else (settings.demo if settings.demo is not None else db.embedded)
    )
    return settings.model_copy(update={"demo": demo_on}), db.url, demo_on


def _export(settings: Settings, url: str) -> None:
    """Worker processes rebuild the settings from the environment: hand them ours."""
    os.environ["DATABASE_URL"] = url
    assert settings.secret_key is not None
    os.environ["INVIGILATOR_SECRET_KEY"] = settings.secret_key.get_secret_value()
    os.environ["INVIGILATOR_ADMIN_KEYS"] = ",".join(
        k.get_secret_value() for k in settings.admin_keys
    )
    os.environ["INVIGILATOR_DEMO"] = "true" if settings.demo else "false"


def run_server(settings: Settings, url: str, host: str, port: int, workers: int) -> None:
    # The web stack is imported here, not at the top: every other command starts faster.
    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the handler that was
    # there before; with Python's default one the process dies without running its exit
    # hooks, and the embedded PostgreSQL would outlive the service. Exit normally instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from invigilator import metrics
    from invigilator.api.app import create_app
    from invigilator.api.observability import configure_logging

    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
    base = f"http://{shown}:{port}"
    out.print(f"Invigilator on {base}")
    out.print(f"  API docs   {base}/docs")
    out.print(f"  staff      {base}/admin")
    if settings.demo:
        out.print(f"  demo test  {base}/demo")
    # Our JSON/text logs for everything, uvicorn's included; our access line replaces uvicorn's.
    configure_logging(settings)
    quiet: dict[str, Any] = {"log_level": "warning", "log_config": None, "access_log": False}
    if workers > 1:
        tcp_nodelay_under_workers()
        _export(settings, url)
        metrics.prepare_multiprocess(workers)  # every worker's counters in every scrape
        uvicorn.run(
            "invigilator.api.app:app_factory",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            **quiet,
        )
    else:
        uvicorn.run(create_app(settings, database_url=url), host=host, port=port, **quiet)


def tcp_nodelay_under_workers() -> None:
    """With --workers N, uvicorn binds the listening socket with `proto` 0; accepted sockets
    inherit it and asyncio then never sets TCP_NODELAY, so every keep-alive response waits
    ~40 ms for the client's delayed ACK (uvicorn issue #3149; measured in BENCHMARKS.md).
    Make the listening socket an IPPROTO_TCP one, as the proposed upstream fix does."""
    import socket

    import uvicorn.config

    original = uvicorn.config.Config.bind_socket

    def bind_socket(self: uvicorn.config.Config) -> socket.socket:
        sock = original(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, sock.detach())
        return sock

    uvicorn.config.Config.bind_socket = bind_socket  # type: ignore[method-assign]


@app.command()
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="API processes.")] = 1,
    demo: Annotated[
        bool | None,
        typer.Option("--demo/--no-demo", help="Serve the demo test at /demo.", show_default=False),
    ] = None,
    database_url: DatabaseUrl = None,
    create_candidate_table: CreateCandidate = False,
) -> None:
    """Run the service: migrations at start, the API, the sweeper, and (on the embedded
    database, or with --demo) the demo test page."""
    settings, url, _ = prepare(database_url, create_candidate_table, demo)
    run_server(settings, url, host, port, workers)
