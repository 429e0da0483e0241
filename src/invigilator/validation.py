"""Input rules the database cannot state well: sizes, depth, encodable text.

Checked before anything is written, so bad input gets a 4xx with a stable code and changes
nothing. Pure functions over plain values.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from invigilator.domain import InvalidInput, PayloadTooLarge

#: Identifiers and names: printable, no control characters (they end up in logs and CSVs).
PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")
MAX_NAME_LENGTH = 128
MAX_SEQ = 2**53 - 1  # the largest integer a browser's JSON numbers hold exactly


@dataclass(frozen=True)
class Limits:
    """The input limits a deployment runs with (their defaults: config.Settings)."""

    max_answers_bytes: int
    max_answer_bytes: int
    max_answers_per_save: int
    max_sections: int
    max_json_depth: int


def check_name(value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME_LENGTH or not PRINTABLE.match(value):
        raise InvalidInput(f"{what} must be 1–{MAX_NAME_LENGTH} printable characters", field=what)
    _check_text(value, what)
    return value


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
