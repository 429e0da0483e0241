"""`python -m invigilator` without paying Python's imports again for every command.

A command's process spends about 0.9 s of CPU importing invigilator, typer, rich, pydantic and
psycopg before it does anything, and the suite runs about a hundred of them on 2 cores. So each
test worker starts one server process that has imported `invigilator.cli` (as multiprocessing's
forkserver preloads modules), and every command is a child forked from it: a real process with
its own pid, environment, stdin/stdout/stderr and exit code, that runs `invigilator/__main__.py`
through `runpy` exactly as `-m` does. What a child cannot see is an environment variable read at
import time: the server is started with the commands' base environment (`cli.cli_env()`), and
the settings (`DATABASE_URL`, `INVIGILATOR_*`) are read when a command runs, not at import.

The protocol, over a Unix socket: the client sends one JSON line (argv, environment, working
directory) with three file descriptors (stdin, stdout, stderr) attached; the child answers its
pid, and at its end its exit code; a child killed by a signal closes the socket unanswered.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_SERVER = r"""
import atexit, json, os, runpy, signal, socket, sys, traceback

import invigilator.cli  # noqa: F401  (the point: imported once, before any fork)

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(64)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
print("ready", flush=True)


def run(conn, request):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a command waits for its own children
    listener.close()
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["invigilator", *request["args"]]
    code = 0
    try:
        runpy.run_module("invigilator", run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # as the interpreter maps it
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        conn.sendall(f"{code}\n".encode())
        os._exit(code)


parent = os.getppid()
listener.settimeout(5)
while True:
    try:
        conn, _ = listener.accept()
    except TimeoutError:  # the test process is gone (killed, say): so is its fork server
        if os.getppid() != parent:
            sys.exit(0)
        continue
    conn.settimeout(None)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not data.endswith(b"\n"):
        data += conn.recv(1 << 20)
    pid = os.fork()
    if pid == 0:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        conn.sendall(f"{os.getpid()}\n".encode())
        run(conn, json.loads(data))
    for fd in fds:
        os.close(fd)
    conn.close()
"""


class ForkServer:
    """One per test process, started at its first command and stopped at the process's exit."""

    def __init__(self, base_env: dict[str, str]) -> None:
        self._dir = tempfile.mkdtemp(prefix="invigilator-forkserver-")
        self.path = str(Path(self._dir) / "socket")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, self.path],
            env=base_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the CLI fork server did not start: {ready!r}")
        atexit.register(self.stop)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def run(
        self, args: list[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Like `subprocess.run([python, -m, invigilator, *args], capture_output=True,
        text=True, env=env, timeout=timeout, stdin=DEVNULL)`."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            request = json.dumps({"args": args, "env": env, "cwd": os.getcwd()}) + "\n"
            with open(os.devnull, "rb") as devnull:
                socket.send_fds(conn, [request.encode()], [devnull.fileno(), out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        replies = conn.makefile("r")
        pid = int(replies.readline())
        outputs: dict[int, bytes] = {}
        readers = [
            threading.Thread(target=_read_all, args=(fd, outputs), daemon=True)
            for fd in (out_r, err_r)
        ]
        for reader in readers:
            reader.start()
        conn.settimeout(timeout)
        try:
            line = replies.readline()
        except TimeoutError:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(args, timeout) from None
        finally:
            for reader in readers:
                reader.join(timeout=30)
            conn.close()
        code = int(line) if line.strip() else -signal.SIGKILL  # killed: no answer came
        stdout, stderr = (_text(outputs.get(fd, b"")) for fd in (out_r, err_r))
        return subprocess.CompletedProcess(args, code, stdout, stderr)


def _read_all(fd: int, into: dict[int, bytes]) -> None:
    chunks = []
    with open(fd, "rb", closefd=True) as stream:
        while chunk := stream.read(65536):
            chunks.append(chunk)
    into[fd] = b"".join(chunks)


def _text(data: bytes) -> str:
    """As `text=True` reads a pipe: decoded, with universal newlines."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


_server: ForkServer | None = None
_lock = threading.Lock()


def fork_server(base_env: dict[str, str]) -> ForkServer:
    """This process's fork server (started now if it is not running)."""
    global _server
    with _lock:
        if _server is None or _server._proc.poll() is not None:
            _server = ForkServer(base_env)
        return _server
