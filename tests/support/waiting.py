"""Waiting for something to happen, with a bound: poll a check until it holds, never sleep a
fixed time and hope. A bound only decides how long a failing test takes to say so."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def _timed_out(what: str, within: float, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {within} s waiting for {what} (last value: {last!r})")


def wait_until(
    check: Callable[[], T], what: str = "", *, within: float = 30.0, interval: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy, and return that."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _timed_out(what or repr(check), within, result)
        time.sleep(interval)


async def eventually(
    check: Callable[[], Any], what: str = "", *, within: float = 30.0, interval: float = 0.02
) -> Any:
    """`wait_until` for async tests: `check` may be sync or async; the loop keeps running."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise _timed_out(what or repr(check), within, result)
        await asyncio.sleep(interval)


def wait_for_http(
    url: str,
    proc: subprocess.Popen[Any] | None = None,
    *,
    within: float = 30.0,
    output: Callable[[], Any] | None = None,
) -> None:
    """Poll GET `url` until it answers 200. Fails at once if `proc` exits first, with what
    `output()` says (by default the process's own output)."""

    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            said = output() if output is not None else proc.communicate()
            raise AssertionError(f"exited ({proc.returncode}) before {url} answered: {said}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=2).status_code == 200
        return False

    wait_until(up, f"{url} to answer 200", within=within, interval=0.05)
