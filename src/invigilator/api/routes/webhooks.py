"""Staff API for webhooks: endpoints beyond INVIGILATOR_WEBHOOK_URL, and the delivery log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, Field

from invigilator.api.deps import RuntimeDep, StaffDep
from invigilator.api.problems import ApiError
from invigilator.validation import check_webhook_url
from invigilator.webhooks.outbox import WebhookStore

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

EventType = Literal[
    "session.started",
    "session.completed",
    "session.abandoned",
    "session.time_extended",
    "session.silent",
    "session.erased",
]


def get_outbox(runtime: RuntimeDep) -> WebhookStore:
    return WebhookStore(runtime.pool)


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


class EndpointCreated(EndpointOut):
    secret: str = Field(description="The signing secret: shown this once.")


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


@router.post("", response_model=EndpointCreated, status_code=201)
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
    """Active endpoints, the environment's included (secrets are never shown)."""
    return [EndpointOut(**_endpoint(r)) for r in await outbox.list_endpoints()]


@router.get("/deliveries", response_model=DeliveryPage)
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
    items = [
        DeliveryOut(
            **{
                **r,
                "event_id": str(r["event_id"]),
                "candidate_id": None if r["candidate_id"] is None else str(r["candidate_id"]),
            }
        )
        for r in rows
    ]
    return DeliveryPage(items=items, next_before_id=items[-1].id if len(items) == limit else None)


@router.delete("/{endpoint_id}", status_code=204)
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
