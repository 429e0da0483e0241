"""Connection strings as people see them: with the password masked, always.

A password is masked however the URL spells it. People paste passwords unescaped, and libpq
accepts many such URLs: it ends the user info at the first `@` or `/`, never at `#` or `?`,
while Python's urlsplit ends it at `/`, `?` or `#` and then splits at the last `@`. So the
URL is not parsed here by either rule: everything between the user's `:` and the last `@`
is treated as the password, which is never less than either parser would read as one.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

_MASK = "****"
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
#: `password=` in a URL's query: up to the next `&` (a `#` is no fragment to libpq).
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&]*)", re.IGNORECASE)
#: Pieces of a password that a misparsed URL may echo in an error message (as a host or a
#: database name): anything between URL delimiters, when long enough to be told apart from
#: ordinary words of the message.
_DELIMITERS = re.compile(r"[@/?#:&=%\s'\"]")
_MIN_PIECE = 3


def _split(url: str) -> tuple[str, str, str] | None:
    """(scheme + "://" + user + ":", password, "@" + the rest) for a URL with a password in
    its user info; None when it has none."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    at = rest.rfind("@")
    if at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    if not colon or not password:
        return None
    return f"{scheme}://{user}:", password, rest[at:]


def mask_url(url: str) -> str:
    """Return `url` with any password replaced by ****: URL userinfo, ?password=, or key=value."""
    if "://" not in url:
        return _KV_PASSWORD.sub(lambda m: m.group(1) + _MASK, url)
    # The query first: a password there may hold the `@` the user info is split at.
    url = _QUERY_PASSWORD.sub(lambda m: m.group(1) + _MASK, url)
    parts = _split(url)
    if parts is not None:
        head, _, tail = parts
        url = f"{head}{_MASK}{tail}"
    return url


def passwords_in(url: str) -> list[str]:
    """Every spelling of the password(s) in `url` worth removing from a message: as written,
    percent-decoded, and its longer pieces. Longest first, so replacing them in order leaves
    no part of a longer one behind."""
    found: list[str] = []
    if "://" not in url:
        match = _KV_PASSWORD.search(url)
        if match:
            found.append(match.group(2))
            found.append(match.group(2).strip("'"))
    else:
        parts = _split(url)
        if parts is not None:
            found.append(parts[1])
        found += [m.group(2) for m in _QUERY_PASSWORD.finditer(url) if m.group(2)]
    spellings: set[str] = set()
    for password in found:
        for spelling in (password, unquote(password)):
            spellings.add(spelling)
            spellings.update(p for p in _DELIMITERS.split(spelling) if len(p) >= _MIN_PIECE)
    return sorted((s for s in spellings if s), key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """Remove the password of `url` from any text (an error message, a log line)."""
    if not url:
        return text
    text = text.replace(url, mask_url(url))
    for spelling in passwords_in(url):
        text = text.replace(spelling, _MASK)
    return text


class ScrubPasswords(logging.Filter):
    """Removes a database URL's password from the records of a logger. libpq quotes pieces of
    a URL it could not parse (`invalid percent-encoded token: "<password>"`, a host that is
    the tail of a password holding `@`), and psycopg's pool logs those messages as they are."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub(message, self.url)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = scrub(str(record.exc_info[1]), self.url)
            if text != str(record.exc_info[1]):
                # the traceback would quote the message again: keep the type, drop the text
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.msg} ({text})"
        return True


#: The loggers that see connection strings' errors (psycopg, its pool).
URL_LOGGERS = ("psycopg", "psycopg.pool")
