"""uvicorn's httptools protocol with a time limit on request headers (slow loris).

uvicorn 0.54 bounds only the idle time between requests (`timeout_keep_alive`, armed after a
response and cancelled by any byte received), so a client that connects and never finishes
its headers, or dribbles a byte every few seconds, holds the connection for as long as it
likes; the app never sees such a request, so no middleware can answer it. This protocol
gives each request head `INVIGILATOR_READ_HEADERS_TIMEOUT_SECONDS` from its first byte (or
from the connection, for the first request), then answers 408 and closes. The body's limit is
the app's (api/limits.py), where the answer can be a proper problem+json.

`invigilator serve` passes it as uvicorn's `http` (also under `--workers`, by import path).
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from invigilator.api.headers import RAW_SECURITY_HEADERS

#: For uvicorn's `http=` (a string, so worker processes import it themselves).
IMPORT_PATH = "invigilator.api.server:BoundedHttpToolsProtocol"

_BODY = json.dumps(
    {
        "type": "urn:invigilator:problem:request_timeout",
        "title": "Request Timeout",
        "status": 408,
        "code": "request_timeout",
        "detail": "the request headers did not arrive in time",
    }
).encode()
_RESPONSE = b"".join(
    [
        b"HTTP/1.1 408 Request Timeout\r\n",
        b"content-type: application/problem+json\r\n",
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
        b"connection: close\r\n",
        *(name + b": " + value + b"\r\n" for name, value in RAW_SECURITY_HEADERS),
        b"\r\n",
        _BODY,
    ]
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    #: Seconds a request head may take; None: read from the settings on first use.
    headers_timeout: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._headers_timer: TimerHandle | None = None

    @classmethod
    def _timeout(cls) -> float:
        if cls.headers_timeout is None:
            from invigilator.config import Settings

            cls.headers_timeout = Settings().read_headers_timeout_seconds
        return cls.headers_timeout

    def _arm(self) -> None:
        if self._headers_timer is None:
            self._headers_timer = self.loop.call_later(self._timeout(), self._headers_late)

    def _disarm(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_late(self) -> None:
        self._headers_timer = None
        if not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is a request head that is late

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
