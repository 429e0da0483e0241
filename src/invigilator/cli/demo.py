"""`invigilator demo`: the service with the demo test page, and the link to take it."""

from __future__ import annotations

import threading
import webbrowser
from typing import Annotated

import typer

from invigilator.cli.app import app, out
from invigilator.cli.options import CreateCandidate, DatabaseUrl
from invigilator.cli.serve import Host, Port, check_port, prepare, run_server


def demo_link(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"  # an IPv6 address
    return f"http://{shown}:{port}/demo"


@app.command(short_help="Run the service with the demo test page, and print its link.")
def demo(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the demo test in a web browser.")
    ] = False,
    database_url: DatabaseUrl = None,
    create_candidate_table: CreateCandidate = False,
) -> None:
    """Run the service with the demo test page (as `serve --demo`) and print its link: open it,
    press Start (that creates a fresh demo candidate and session), answer, reload midway, and
    submit."""
    check_port(host, port)
    settings, url, _ = prepare(database_url, create_candidate_table, True)
    link = demo_link(host, port)
    out.print(f"\nDemo test: [bold]{link}[/bold]")
    out.print("  Press Start for a fresh demo candidate; reload midway, then submit.\n")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(link,)).start()
    run_server(settings, url, host, port, workers=1)
