"""Staff API for webhooks: endpoints beyond INVIGILATOR_WEBHOOK_URL, their secrets' rotation,
and the delivery log (with a retry for a failed delivery)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from pydantic import BaseModel, Field

from invigilator.api.deps import RuntimeDep, StaffDep
from invigilator.api.problems import ApiError, responses
from invigilator.api.routes import operation_id
from invigilator.validation import check_webhook_url
from invigilator.webhooks.outbox import WebhookStore
from invigilator.webhooks.vault import SecretBox

router = APIRouter(
    generate_unique_id_function=operation_id,
    prefix="/api/v1/webhooks",
    tags=["webhooks"],
    responses=responses(401, 503),
)

EventType = Literal[
    "session.started",
    "session.completed",
    "session.abandoned",
    "session.time_extended",
    "session.silent",
    "session.erased",
    "session.paused",
    "session.resumed",
    "session.reopened",
    "session.flagged",
]


def get_outbox(runtime: RuntimeDep) -> WebhookStore:
    return WebhookStore(runtime.pool, SecretBox.from_settings(runtime.settings))


OutboxDep = Annotated[WebhookStore, Depends(get_outbox)]


class EndpointIn(BaseModel):
    url: str = Field(max_length=2000, description="http(s) URL the events are POSTed to.")
    event_types: list[EventType] | None = Field(
        None, description="Only these event types; every type when omitted."
    )
    include_answers: bool = Field(
        False, strict=True, description="Include the session's pending_answers."
    )
    description: str | None = Field(None, max_length=500)


class EndpointOut(BaseModel):
    id: int
    url: str
    event_types: list[str] | None
    include_answers: bool
    from_env: bool = Field(description="Configured by INVIGILATOR_WEBHOOK_URL (not removable).")
    active: bool
    description: str | None
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation: until then deliveries are signed with the old secret too."
    )
    disabled_at: datetime | None = Field(
        description="When the receiver answered 410 Gone, which turned the endpoint off."
    )
    disabled_reason: str | None


class EndpointCreated(EndpointOut):
    secret: str = Field(
        description="The signing secret (Standard Webhooks `whsec_…`): shown this once."
    )


class RotateRequest(BaseModel):
    previous_valid_hours: float = Field(
        default=24,
        ge=0,
        le=24 * 30,
        description="How long the current secret keeps signing beside the new one (0: not).",
    )


class DeliveryOut(BaseModel):
    id: int
    event_id: str
    type: str
    candidate_id: str | None = Field(description="None for session.erased (names no one)")
    endpoint_id: int
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_before_id: int | None = Field(description="Pass as before_id for the next page.")


def _endpoint(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k in EndpointOut.model_fields}


@router.post(
    "", response_model=EndpointCreated, status_code=201, responses=responses(403, 413, 422)
)
async def create_endpoint(body: EndpointIn, staff: StaffDep, outbox: OutboxDep) -> EndpointCreated:
    """Register an endpoint. Its signing secret is in this response only: keep it."""
    row = await outbox.create_endpoint(
        check_webhook_url(body.url),
        event_types=list(dict.fromkeys(body.event_types)) if body.event_types else None,
        include_answers=body.include_answers,
        description=body.description,
    )
    return EndpointCreated(**_endpoint(row), secret=row["secret"])


@router.get("", response_model=list[EndpointOut])
async def list_endpoints(staff: StaffDep, outbox: OutboxDep) -> list[EndpointOut]:
    """Endpoints not removed (active, or turned off by a 410 Gone), the environment's included
    (secrets are never shown)."""
    return [EndpointOut(**_endpoint(r)) for r in await outbox.list_endpoints()]


@router.get("/deliveries", response_model=DeliveryPage, responses=responses(422))
async def deliveries(
    staff: StaffDep,
    outbox: OutboxDep,
    status: Literal["pending", "delivered", "failed"] | None = None,
    candidate_id: Annotated[str | None, Query(max_length=36)] = None,
    before_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryPage:
    """The delivery log, newest first: what was sent where, how often, and what came back."""
    rows = await outbox.deliveries(
        status=status, candidate_id=candidate_id, before_id=before_id, limit=limit
    )
    items = [_delivery(r) for r in rows]
    return DeliveryPage(items=items, next_before_id=items[-1].id if len(items) == limit else None)


def _delivery(row: dict[str, Any]) -> DeliveryOut:
    return DeliveryOut(
        **{
            **row,
            "event_id": str(row["event_id"]),
            # session.erased names no candidate (the row is gone)
            "candidate_id": None if row["candidate_id"] is None else str(row["candidate_id"]),
        }
    )


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=DeliveryOut,
    status_code=202,
    responses=responses(
        403, 404, 409, 422, s409="`delivery_not_failed`, or `endpoint_inactive` (off or removed)."
    ),
)
async def retry_delivery(
    delivery_id: Annotated[int, Path(ge=1)], staff: StaffDep, outbox: OutboxDep
) -> DeliveryOut:
    """Send a failed delivery again, now (same `webhook-id`: receivers that saw it dedupe).
    Should it fail again, it is retried with backoff until 24 h after the event."""
    if not await outbox.retry(delivery_id):
        found = await outbox.deliveries(delivery_id=delivery_id, limit=1)
        if not found:
            raise ApiError("not_found", f"no webhook delivery {delivery_id}")
        endpoint = await outbox.get_endpoint(found[0]["endpoint_id"])
        if found[0]["status"] != "failed":
            raise ApiError(
                "delivery_not_failed",
                f"delivery {delivery_id} is {found[0]['status']}: only a failed one is retried",
            )
        reason = "removed" if endpoint is None or not endpoint["disabled_at"] else "disabled"
        raise ApiError(
            "endpoint_inactive",
            f"delivery {delivery_id}'s endpoint is {reason}: nothing to send to",
        )
    (row,) = await outbox.deliveries(delivery_id=delivery_id, limit=1)
    return _delivery(row)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointCreated,
    responses=responses(
        403, 404, 413, 422, s403="`forbidden`: the environment's endpoint (or a cross-site cookie)."
    ),
)
async def rotate_secret(
    endpoint_id: Annotated[int, Path(ge=1)],
    staff: StaffDep,
    outbox: OutboxDep,
    body: Annotated[RotateRequest | None, Body()] = None,
) -> EndpointCreated:
    """A new signing secret, shown in this response only. Until `previous_secret_expires_at`
    (default 24 h) every delivery is signed with both, so receivers can switch at their pace."""
    keep = timedelta(hours=(body or RotateRequest()).previous_valid_hours)
    row = await outbox.rotate_secret(endpoint_id, keep=keep)
    if row is None:
        existing = await outbox.get_endpoint(endpoint_id)
        if existing is not None and existing["from_env"]:
            raise ApiError(
                "forbidden",
                "this endpoint's secret is INVIGILATOR_WEBHOOK_SECRET: list the new secret "
                "first there, then the old one, space-separated",
            )
        raise ApiError("not_found", f"no active webhook endpoint {endpoint_id}")
    return EndpointCreated(**_endpoint(row), secret=row["secret"])


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    responses=responses(
        403, 404, 422, s403="`forbidden`: the environment's endpoint (or a cross-site cookie)."
    ),
)
async def delete_endpoint(
    endpoint_id: Annotated[int, Path(ge=1)], staff: StaffDep, outbox: OutboxDep
) -> Response:
    """Stop delivering to an endpoint; its pending deliveries fail, its log stays."""
    if not await outbox.remove_endpoint(endpoint_id):
        existing = await outbox.get_endpoint(endpoint_id)
        if existing is not None and existing["from_env"]:
            raise ApiError(
                "forbidden", "this endpoint comes from INVIGILATOR_WEBHOOK_URL: unset it instead"
            )
        raise ApiError("not_found", f"no active webhook endpoint {endpoint_id}")
    return Response(status_code=204)
