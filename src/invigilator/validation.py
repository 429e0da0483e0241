"""Input rules: the alphabet of ids and names (which the database states too), and what it
cannot state well: sizes, depth, encodable text, numbers that keep their value.

Checked before anything is written, so bad input gets a 4xx with a stable code and changes
nothing. Pure functions over plain values.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from invigilator.domain import MAX_CANDIDATE_ID_LENGTH, InvalidInput, PayloadTooLarge

#: The one alphabet of candidate ids, section names and answer keys: what host applications
#: use as keys (UUIDs, ULIDs, slugs, emails, `part:question` names) and nothing that can
#: change a URL path (`/`; `.` and `..` alone, hence at least one letter or digit), break a
#: log line or a CSV (controls, U+2028/2029, a trailing newline), or hide as whitespace. The
#: database states the same rule (migration 0005).
NAME_CHARACTERS = r"A-Za-z0-9._:@+-"
MAX_NAME_LENGTH = 128
#: The alphabet, with at least one letter or digit; lengths are checked apart. Written for
#: pydantic's regex engine too, where `$` is the end of the text (Python's `re.match` would
#: also accept a trailing newline before `$`: `fullmatch` below does not).
NAME_PATTERN = f"^[{NAME_CHARACTERS}]*[A-Za-z0-9][{NAME_CHARACTERS}]*$"
_NAME = re.compile(NAME_PATTERN[1:-1])
MAX_PAGE_ID_LENGTH = 64  # mirrors CHECK test_session_page_id_check (migration 0007)
MAX_USER_AGENT_LENGTH = 512  # kept of a page's User-Agent header: a device, not a document
MAX_SEQ = 2**53 - 1  # the largest integer a browser's JSON numbers hold exactly
#: An incident's reason code is a name (what a host app files and counts by, e.g.
#: `second_person`); its note is free text, bounded. The incidents migration states the same.
MAX_REASON_CODE_LENGTH = 64
MAX_NOTE_LENGTH = 2000


@dataclass(frozen=True)
class Limits:
    """The input limits a deployment runs with (their defaults: config.Settings)."""

    max_answers_bytes: int
    max_answer_bytes: int
    max_answers_per_save: int
    max_sections: int
    max_json_depth: int
    max_bulk_sessions: int
    bulk_concurrency: int  # not an input limit, but the service's one other bound on a bulk


def is_name(value: object, max_length: int = MAX_NAME_LENGTH) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and _NAME.fullmatch(value) is not None
    )


def is_candidate_id(value: object) -> bool:
    return is_name(value, MAX_CANDIDATE_ID_LENGTH)


def check_candidate_id(value: str, what: str = "candidate_id") -> str:
    if not is_candidate_id(value):
        raise InvalidInput(
            f"{what} must be 1–{MAX_CANDIDATE_ID_LENGTH} of the characters {NAME_CHARACTERS}, "
            "with a letter or digit",
            field=what,
        )
    return value


def check_name(value: str, what: str) -> str:
    """A section name or an answer key: the candidate id's alphabet, up to MAX_NAME_LENGTH."""
    if not is_name(value):
        raise InvalidInput(
            f"{what} must be 1–{MAX_NAME_LENGTH} of the characters {NAME_CHARACTERS}, "
            "with a letter or digit",
            field=what,
        )
    return value


def check_page_id(value: str) -> str:
    """A page's id (the browser client makes a random one per page): a name, up to 64."""
    if not is_name(value, MAX_PAGE_ID_LENGTH):
        raise InvalidInput(
            f"page_id must be 1–{MAX_PAGE_ID_LENGTH} of the characters {NAME_CHARACTERS}, "
            "with a letter or digit",
            field="page_id",
        )
    return value


def check_incident(reason_code: str, note: str) -> None:
    """An incident's reason code (the name alphabet, up to MAX_REASON_CODE_LENGTH) and note
    (text up to MAX_NOTE_LENGTH characters, no NUL)."""
    if not is_name(reason_code, MAX_REASON_CODE_LENGTH):
        raise InvalidInput(
            f"reason_code must be 1–{MAX_REASON_CODE_LENGTH} of the characters "
            f"{NAME_CHARACTERS}, with a letter or digit",
            field="reason_code",
        )
    if len(note) > MAX_NOTE_LENGTH:
        raise InvalidInput(f"note must be at most {MAX_NOTE_LENGTH} characters", field="note")
    _check_text(note, "note")


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise InvalidInput(f"{where} contains a NUL character (\\u0000)", field=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{where} contains a lone surrogate (not valid Unicode text)", field=where
        ) from None


def _walk(value: Any, where: str, depth: int, limits: Limits) -> None:
    if depth > limits.max_json_depth:
        raise InvalidInput(
            f"{where} is nested deeper than {limits.max_json_depth} levels", field=where
        )
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _walk(item, where, depth + 1, limits)
    elif isinstance(value, list):
        for item in value:
            _walk(item, where, depth + 1, limits)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{where} contains a number JSON cannot hold", field=where)
    elif isinstance(value, float) and abs(value) > MAX_SEQ:
        # PostgreSQL keeps JSON numbers as numeric and writes 1e308 back as its 309 digits,
        # which would come back as an integer past MAX_SEQ: refused now, not at the next save.
        raise InvalidInput(
            f"{where} contains a number too large to keep exactly (at most {MAX_SEQ})",
            field=where,
        )
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SEQ:
        raise InvalidInput(f"{where} contains a number too large to keep exactly", field=where)


def check_answers(answers: dict[str, Any], limits: Limits) -> None:
    """Answers as a browser may send them: question -> any JSON value, within the limits."""
    if not answers:
        raise InvalidInput("answers must name at least one question", field="answers")
    if len(answers) > limits.max_answers_per_save:
        raise PayloadTooLarge(
            f"at most {limits.max_answers_per_save} answers per save",
            limit=limits.max_answers_per_save,
        )
    for question, value in answers.items():
        check_name(question, "question")
        _walk(value, f"answers[{question!r}]", 1, limits)
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        if size > limits.max_answer_bytes:
            raise PayloadTooLarge(
                f"the answer to {question!r} is {size} bytes; the limit is "
                f"{limits.max_answer_bytes}",
                limit_bytes=limits.max_answer_bytes,
            )


#: Anything a URL must not hold as such: whitespace, controls (CR/LF would split a request
#: line), and what urlsplit reads loosely.
_URL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\\<>\"{}|^`]")


_IPV6_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host and, if any, a port in 1–65535, made of URL characters."""
    bad = InvalidInput(
        "url must be an http:// or https:// URL with a host (and a port in 1–65535), "
        "without spaces or control characters",
        field="url",
    )
    if not isinstance(url, str) or _URL_FORBIDDEN.search(url):
        raise bad
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0–65535
        host = parts.hostname
    except ValueError:  # e.g. "[" (an unclosed IPv6 literal)
        raise bad from None
    if parts.scheme not in ("http", "https") or not host or port == 0:
        raise bad
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    rest = url.split("://", 1)[1][len(parts.netloc) :]
    # Brackets only around an IPv6 host (RFC 3986); anywhere else they are not URL characters.
    if "[" in userinfo + rest or "]" in userinfo + rest:
        raise bad
    if "[" in hostinfo and not _IPV6_HOST.fullmatch(hostinfo):
        raise bad
    return url
