"""Dependencies as `Annotated` aliases: the store, the settings, and who is calling."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from invigilator.api import tokens
from invigilator.api.problems import ApiError
from invigilator.api.runtime import Runtime
from invigilator.domain import MAX_CANDIDATE_ID_LENGTH
from invigilator.store import SessionStore
from invigilator.validation import PRINTABLE

STAFF_COOKIE = "invigilator_staff"

_bearer = HTTPBearer(auto_error=False, description="Staff key or candidate token")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_store(runtime: RuntimeDep) -> SessionStore:
    return runtime.store


StoreDep = Annotated[SessionStore, Depends(get_store)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
CandidateIdPath = Annotated[
    str,
    Path(min_length=1, max_length=MAX_CANDIDATE_ID_LENGTH, pattern=PRINTABLE.pattern),
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
    return Staff(hashlib.sha256(matched).hexdigest()[:8])


def require_staff(request: Request, credentials: Credentials, runtime: RuntimeDep) -> Staff:
    presented = credentials.credentials if credentials else request.cookies.get(STAFF_COOKIE)
    if not presented:
        raise ApiError("unauthorized", "a staff key is required (Authorization: Bearer <key>)")
    staff = match_staff_key(presented, runtime)
    if staff is None:
        raise ApiError("unauthorized", "the staff key is not valid")
    return staff


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
    return candidate_from_token(credentials.credentials, candidate_id, runtime)


CandidateDep = Annotated[str, Depends(require_candidate)]


def require_candidate_or_staff(
    request: Request, candidate_id: CandidateIdPath, credentials: Credentials, runtime: RuntimeDep
) -> str:
    if credentials is not None and match_staff_key(credentials.credentials, runtime):
        return candidate_id
    if credentials is None and request.cookies.get(STAFF_COOKIE):
        require_staff(request, None, runtime)
        return candidate_id
    return require_candidate(candidate_id, credentials, runtime)


CandidateOrStaffDep = Annotated[str, Depends(require_candidate_or_staff)]
