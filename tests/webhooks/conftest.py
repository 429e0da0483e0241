"""A loopback webhook receiver per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.webhooks import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()
