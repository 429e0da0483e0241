"""Connection strings as people see them: with the password masked, always."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_MASK = "****"
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return `url` with any password replaced by ****: URL userinfo, ?password=, or key=value."""
    if "://" not in url:
        return _KV_PASSWORD.sub(lambda m: m.group(1) + _MASK, url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        if sep and password:
            netloc = f"{user}:{_MASK}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode([(k, _MASK if k.lower() == "password" else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, url: str | None) -> str:
    """Remove the password of `url` from any text (an error message, a log line)."""
    if not url:
        return text
    password = _password_of(url)
    if password:
        text = text.replace(password, _MASK)
    return text.replace(url, mask_url(url))


def _password_of(url: str) -> str | None:
    if "://" not in url:
        match = _KV_PASSWORD.search(url)
        return match.group(2).strip("'") if match else None
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    for key, value in parse_qsl(parts.query):
        if key.lower() == "password":
            return value
    return None
