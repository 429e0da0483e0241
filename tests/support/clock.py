"""An event loop on virtual time, for unit tests of timing logic with no I/O.

Its clock stands still while anything is ready to run, and when the loop would wait for a
timer it jumps straight to that timer instead. So `call_later(5, …)` fires after exactly 5
virtual seconds, in no wall-clock time, however slow or loaded the machine is: a test can
assert *when* something happened (`loop.time()`) and can never fail because of the clock.

    def test_x() -> None:
        run_virtual(scenario())      # scenario() may call asyncio.get_running_loop().time()

Only for code that waits on timers and on other tasks: a loop with nothing to run and no
timer would wait forever, so it raises instead.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)  # the loop's own wake-up pipe; never block on it
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: nothing is ready to run and no timer is set")
        assert self.loop is not None
        self.loop.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end on a fresh VirtualClockLoop (virtual time starts at 0)."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)
