"""`invigilator serve` and `invigilator demo`: the HTTP service (uvicorn)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import SecretStr

from invigilator.cli.app import CommandFailed, app, database, err, out
from invigilator.cli.options import CreateCandidate, DatabaseUrl
from invigilator.config import Settings
from invigilator.db import migrate
from invigilator.secrets_file import load_or_create

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

Host = Annotated[str, typer.Option(help="Interface to listen on.")]
Port = Annotated[int, typer.Option(help="TCP port.")]


def prepare(
    database_url: str | None, create_candidate_table: bool, demo: bool | None
) -> tuple[Settings, str, bool]:
    """Choose the database, migrate it, make sure there are credentials. Returns the settings
    to serve with, the database URL and whether the demo is on."""
    settings = Settings()
    db = database(database_url, settings)
    migrate.upgrade(db.url, create_candidate_table=create_candidate_table or db.embedded)
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


def check_port(host: str, port: int) -> None:
    """Refuse a port this process cannot listen on, before anything starts or is printed (what
    uvicorn would find out only after the banner, the migrations and the app's start-up)."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CommandFailed(f"cannot listen on {host!r}: {exc.strerror}; check --host") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CommandFailed(
                        f"port {port} on {host} is already in use: stop what listens there, "
                        "or choose another with --port"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise CommandFailed(
                        f"not allowed to listen on port {port}: choose one above 1023 with --port"
                    ) from None
                raise CommandFailed(
                    f"cannot listen on {host} port {port}: {exc.strerror}; check --host and --port"
                ) from None


def run_server(settings: Settings, url: str, host: str, port: int, workers: int) -> None:
    # The web stack is imported here, not at the top: every other command starts faster.
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the handler that was
    # there before; with Python's default one the process dies without running its exit
    # hooks, and the embedded PostgreSQL would outlive the service. Exit normally instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from invigilator import metrics
    from invigilator.api.app import create_app

    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
    base = f"http://{shown}:{port}"
    out.print(f"Invigilator on {base}")
    out.print(f"  API docs   {base}/docs")
    out.print(f"  staff      {base}/admin")
    if settings.demo:
        out.print(f"  demo test  {base}/demo")
    # Our JSON/text logs for everything, uvicorn's included; our access line replaces uvicorn's.
    quiet: dict[str, Any] = {"log_level": "warning", "log_config": None, "access_log": False}
    from invigilator.api import server as bounded

    # Request heads have a time limit (slow loris); bodies have theirs in the app.
    bounded.BoundedHttpToolsProtocol.headers_timeout = settings.read_headers_timeout_seconds
    quiet["http"] = bounded.IMPORT_PATH
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        tcp_nodelay_under_workers()
        _export(settings, url)
        metrics.prepare_multiprocess(workers)  # every worker's counters in every scrape
        config = uvicorn.Config(
            "invigilator.api.app:app_factory",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            **quiet,
        )
        # What uvicorn.run does with workers, keeping the supervisor: uvicorn.run exits 0 when
        # a worker failed to start (it stops the others and returns).
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
        if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            raise CommandFailed("the service did not start: the error is logged above")
        return
    config = uvicorn.Config(create_app(settings, database_url=url), host=host, port=port, **quiet)
    server = _server(config)
    failure = _StartFailure()
    logging.getLogger("uvicorn.error").addHandler(failure)
    try:
        server.run()
    except KeyboardInterrupt:  # SIGINT: uvicorn has shut down, then raised it again
        pass
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE or server.started:
            raise
        raise CommandFailed(
            f"the service did not start: {failure.reason or 'the error is logged above'}"
        ) from None
    finally:
        logging.getLogger("uvicorn.error").removeHandler(failure)


class _StartFailure(logging.Handler):
    """Why uvicorn gave up starting, in one line: the exception that ended the app's start-up
    (the last line of the traceback uvicorn logs), or the socket's error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if text.startswith("Traceback"):
            self.reason = text.splitlines()[-1]
        elif text and not text.startswith(("Application startup failed", "Exception in")):
            self.reason = self.reason or text.splitlines()[0]


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


def _server(config: uvicorn.Config) -> uvicorn.Server:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn looks at a signal only once its start-up is over: a part of the app that
        never finished starting would leave `serve` deaf to SIGTERM. A signal during start-up
        cancels it; the app's lifespan then stops what had started."""

        serving: asyncio.Task[Any] | None = None
        loop: asyncio.AbstractEventLoop | None = None
        cancelled_start = False

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self.serving = asyncio.current_task()
            self.loop = asyncio.get_running_loop()
            try:
                await super().serve(sockets)
            except asyncio.CancelledError:
                if not self.cancelled_start:
                    raise

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if not self.started and self.loop is not None and not self.cancelled_start:
                # Not from inside a signal handler: logging takes locks.
                self.loop.call_soon_threadsafe(self.cancel_start, signal.Signals(sig).name)

        def cancel_start(self, name: str) -> None:
            if self.started or self.serving is None:
                return
            self.cancelled_start = True
            log.warning("%s during start-up: stopping what has started", name)
            # uvicorn would report the cancelled start-up as a failure, traceback and all.
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
            self.serving.cancel()

    return Server(config)


@app.command(short_help="Run the service: the API, the sweeper and webhooks.")
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
    check_port(host, port)
    settings, url, _ = prepare(database_url, create_candidate_table, demo)
    run_server(settings, url, host, port, workers)
