"""Dependencies as `Annotated` aliases: the service, the settings, and who is calling."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer

from invigilator.api import tokens
from invigilator.api.problems import ApiError
from invigilator.api.runtime import Runtime
from invigilator.domain import MAX_CANDIDATE_ID_LENGTH
from invigilator.service import Sessions
from invigilator.validation import NAME_PATTERN

STAFF_COOKIE = "invigilator_staff"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _BearerToken(HTTPBearer):
    """The request's bearer token, parsed by tokens.bearer like everywhere else; HTTPBearer
    only for the security scheme it declares in the OpenAPI document."""

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        return tokens.bearer(request.scope["headers"])


_bearer = _BearerToken(auto_error=False, description="Staff key or candidate token")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_sessions(runtime: RuntimeDep) -> Sessions:
    return runtime.sessions


SessionsDep = Annotated[Sessions, Depends(get_sessions)]
Credentials = Annotated[str | None, Depends(_bearer)]
CandidateIdPath = Annotated[
    str, Path(min_length=1, max_length=MAX_CANDIDATE_ID_LENGTH, pattern=NAME_PATTERN)
]


@dataclass(frozen=True)
class Staff:
    """A staff caller, known by a fingerprint of their key (never the key itself)."""

    fingerprint: str

    @property
    def actor(self) -> str:
        return f"staff:{self.fingerprint}"


def match_staff_key(presented: str, runtime: Runtime) -> Staff | None:
    """Compare against every configured key in constant time (no early exit on a match)."""
    given = presented.encode()
    matched: bytes | None = None
    for key in runtime.admin_keys:
        if hmac.compare_digest(given, key):
            matched = key
    if matched is None:
        return None
    return Staff(fingerprint(matched))


def fingerprint(key: bytes) -> str:
    """How a staff key is named in logs, events and cookies: never the key itself."""
    return hashlib.sha256(key).hexdigest()[:8]


async def staff_from_cookie(request: Request, runtime: Runtime) -> Staff | None:
    """The dashboard's signed sign-in cookie, if it names a key that is still configured
    (removing a key from INVIGILATOR_ADMIN_KEYS signs its holders out) and it has not been
    signed out (recorded in the database, so in every worker process)."""
    cookie = request.cookies.get(STAFF_COOKIE)
    if not cookie:
        return None
    sign_in = tokens.verify_staff_session(cookie, runtime.secret_key)
    if not any(
        hmac.compare_digest(sign_in.fingerprint, fingerprint(key)) for key in runtime.admin_keys
    ):
        raise ApiError("unauthorized", "this staff key is no longer valid; sign in again")
    if await runtime.sessions.staff_sign_in_ended(sign_in.sign_in_id):
        raise ApiError("unauthorized", "this staff sign-in has ended; sign in again")
    return Staff(sign_in.fingerprint)


async def require_staff(request: Request, credentials: Credentials, runtime: RuntimeDep) -> Staff:
    if credentials is not None:
        staff = match_staff_key(credentials, runtime)
        if staff is None:
            raise ApiError("unauthorized", "the staff key is not valid")
        return staff
    staff = await staff_from_cookie(request, runtime)
    if staff is None:
        raise ApiError("unauthorized", "a staff key is required (Authorization: Bearer <key>)")
    if credentials is None and request.method not in SAFE_METHODS and not same_origin(request):
        # The cookie is sent by the browser on its own: a change it authorises must come from
        # a page of this site (CSRF), whatever SameSite the cookie was set with.
        raise ApiError(
            "forbidden",
            "a staff change authorised by the staff cookie must come from this site's own "
            "pages (or use Authorization: Bearer)",
            reason="cross_site_request",
        )
    return staff


def same_origin(request: Request) -> bool:
    """Whether the browser says the request comes from a page of this origin: `Sec-Fetch-Site`
    (every current browser sends it), else `Origin` against `Host`. Neither: not a browser
    request from our pages, so no."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")  # "none": typed or bookmarked by the user
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if not origin or not host or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


StaffDep = Annotated[Staff, Depends(require_staff)]


def candidate_from_token(token: str, candidate_id: str, runtime: Runtime) -> str:
    claims = tokens.verify(token, runtime.secret_key)
    if not hmac.compare_digest(claims.candidate_id.encode(), candidate_id.encode()):
        raise ApiError("forbidden", "this token opens another candidate's session")
    return candidate_id


def require_candidate(
    candidate_id: CandidateIdPath, credentials: Credentials, runtime: RuntimeDep
) -> str:
    if credentials is None:
        raise ApiError("unauthorized", "a candidate token is required (Authorization: Bearer)")
    return candidate_from_token(credentials, candidate_id, runtime)


CandidateDep = Annotated[str, Depends(require_candidate)]


async def require_candidate_or_staff(
    request: Request, candidate_id: CandidateIdPath, credentials: Credentials, runtime: RuntimeDep
) -> str:
    if credentials is not None and match_staff_key(credentials, runtime):
        return candidate_id
    if credentials is None and await staff_from_cookie(request, runtime) is not None:
        return candidate_id
    return require_candidate(candidate_id, credentials, runtime)


CandidateOrStaffDep = Annotated[str, Depends(require_candidate_or_staff)]
