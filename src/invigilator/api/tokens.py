"""Candidate tokens: a signed JWT (HS256, PyJWT) bound to one candidate_id.

A token opens exactly one session. It expires after the session could no longer change: the
deadline plus the most staff could ever extend it and the grace periods. Writes after the
session ended are refused by the session's status, whatever the token says.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from invigilator.domain import MAX_EXTENSION_MINUTES, InvigilatorError, Policy, Session

AUDIENCE = "invigilator:candidate"
ALGORITHM = "HS256"


class TokenInvalid(InvigilatorError):
    code = "token_invalid"


class TokenExpired(InvigilatorError):
    code = "token_expired"


@dataclass(frozen=True)
class CandidateClaims:
    candidate_id: str
    expires_at: datetime


def token_expiry(test_start_time: datetime, duration_minutes: int, policy: Policy) -> datetime:
    latest_deadline = test_start_time + timedelta(minutes=duration_minutes + MAX_EXTENSION_MINUTES)
    return latest_deadline + policy.deadline_grace + policy.tab_close_grace


def session_token_expiry(session: Session, policy: Policy) -> datetime:
    """As token_expiry, for the session as it is: its accommodations, its clock from now when
    it is paused or was reopened, and the grace of policy `grace`. A pause longer than the most
    staff could extend a session outlives its token: a new start hands out a fresh one."""
    multiplier = session.accommodations.time_multiplier
    allowed = session.test_duration_minutes * multiplier + session.accommodations.extra_minutes
    since_start = token_expiry(session.test_start_time, 0, policy) + timedelta(minutes=allowed)
    from_now = token_expiry(session.current_deadline, 0, policy)
    grace = timedelta(seconds=session.policy.grace_seconds or 0) * multiplier
    return max(since_start, from_now) + grace


def issue(candidate_id: str, expires_at: datetime, secret: str, issued_at: datetime) -> str:
    claims = {"sub": candidate_id, "aud": AUDIENCE, "iat": issued_at, "exp": expires_at}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def for_session(session: Session, policy: Policy, secret: str) -> tuple[str, datetime]:
    """The candidate's token for this session, and when it expires: what a start hands out."""
    expires = session_token_expiry(session, policy)
    return issue(session.candidate_id, expires, secret, session.server_now), expires


#: Tokens already verified, with their claims: a heartbeat every 15 s re-presents the same
#: token for hours, and an HMAC check plus JSON decoding per request is the API's largest cost
#: after the framework. Bounded; expiry is still checked on every use.
_VERIFIED: dict[tuple[str, str], CandidateClaims] = {}
_VERIFIED_MAX = 100_000


def verify(token: str, secret: str) -> CandidateClaims:
    cached = _VERIFIED.get((token, secret))
    if cached is not None:
        if cached.expires_at.timestamp() > time.time():
            return cached
        raise TokenExpired("the candidate token has expired")
    claims = _decode(token, secret)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.pop(next(iter(_VERIFIED)))  # the oldest entry: dicts keep insertion order
    _VERIFIED[(token, secret)] = claims
    return claims


def _decode(token: str, secret: str) -> CandidateClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("the candidate token has expired") from None
    except jwt.PyJWTError:
        raise TokenInvalid("the candidate token is not valid") from None
    subject, expires = claims["sub"], claims["exp"]
    # PyJWT checks `exp` only against the clock: a numeric string, a float past year 9999 or
    # a huge integer (signed with the real key) would get this far and fail as a datetime.
    if (
        not isinstance(subject, str)
        or not isinstance(expires, int | float)
        or isinstance(expires, bool)
    ):
        raise TokenInvalid("the candidate token is not valid")
    try:
        expires_at = datetime.fromtimestamp(expires).astimezone()
    except (OverflowError, OSError, ValueError):
        raise TokenInvalid("the candidate token is not valid") from None
    return CandidateClaims(subject, expires_at)


# --- staff sessions (the dashboard's cookie) ------------------------------------------------

STAFF_AUDIENCE = "invigilator:staff"


@dataclass(frozen=True)
class StaffSignIn:
    """A dashboard sign-in: the key it stands for (by fingerprint), and its own id, by which
    signing out ends it on the server."""

    fingerprint: str
    sign_in_id: str
    expires_at: datetime


def issue_staff_session(fingerprint: str, secret: str, issued_at: datetime, ttl: timedelta) -> str:
    """A signed, expiring stand-in for a staff key, so the key itself never sits in a cookie."""
    claims = {
        "sub": fingerprint,
        "aud": STAFF_AUDIENCE,
        "iat": issued_at,
        "exp": issued_at + ttl,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_staff_session(token: str, secret: str) -> StaffSignIn:
    """The sign-in a dashboard cookie was issued for (whether it was signed out is the
    database's to say: invigilator.privacy)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=STAFF_AUDIENCE,
            options={"require": ["sub", "exp", "aud", "jti"]},
        )
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
    except jwt.ExpiredSignatureError:
        raise TokenExpired("the staff sign-in has expired; sign in again") from None
    except (jwt.PyJWTError, TypeError, ValueError, OverflowError, OSError):
        raise TokenInvalid("the staff sign-in is not valid; sign in again") from None
    return StaffSignIn(str(claims["sub"]), str(claims["jti"]), expires_at)


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of an ASGI request's headers, if it has one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def opens(token: str, candidate_id: str, secret: str) -> bool:
    """Whether `token` is valid and opens `candidate_id`'s session (compared in constant time)."""
    try:
        claims = verify(token, secret)
    except InvigilatorError:
        return False
    return hmac.compare_digest(claims.candidate_id.encode(), candidate_id.encode())
