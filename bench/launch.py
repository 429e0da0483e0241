"""Start `invigilator serve …` or `uvicorn …` with TCP_NODELAY working under --workers N.

uvicorn's multi-process supervisor binds the listening socket itself with `proto` left at 0;
accepted sockets inherit it, and asyncio only turns on TCP_NODELAY when `proto ==
IPPROTO_TCP`. Nagle's algorithm then holds each response's body (written after its headers)
until the client's delayed ACK, about 40 ms on Linux: every keep-alive request costs 40+ ms,
and a closed-loop benchmark measures connections / 44 ms instead of the server (uvicorn issue
#3149; `--workers 1` is unaffected). This shim makes the listening socket an IPPROTO_TCP one,
exactly what the proposed upstream fix does, and then runs the command unchanged, so every
server in bench.heartbeat (baselines and Invigilator) gets the same working stack.
`invigilator serve --workers N` now applies the same fix itself; the `invigilator_as_shipped`
scenario runs it without this shim.

    python -m bench.launch invigilator serve --workers 2 …
    python -m bench.launch uvicorn bench.baseline_app:app --workers 2 …

BENCH_ANSWER_STORAGE=jsonb makes Invigilator save answers as it did before migration 0006
(bench/jsonb_storage.py): bench.answers' baseline.
"""

from __future__ import annotations

import sys

from bench import jsonb_storage

# At import, so that the spawned workers (which import this module again) get it too.
jsonb_storage.install_if_asked()


def patch_uvicorn() -> None:
    # The same fix `invigilator serve --workers N` applies; here for the baselines too.
    from invigilator.cli.serve import tcp_nodelay_under_workers

    tcp_nodelay_under_workers()


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("invigilator", "uvicorn"):
        raise SystemExit("usage: python -m bench.launch {invigilator|uvicorn} ARGS…")
    patch_uvicorn()
    command = sys.argv[1]
    sys.argv = [command, *sys.argv[2:]]
    if command == "invigilator":
        from invigilator.cli import main as invigilator_main

        invigilator_main()
    else:
        from uvicorn.main import main as uvicorn_main

        uvicorn_main()


if __name__ == "__main__":
    main()
