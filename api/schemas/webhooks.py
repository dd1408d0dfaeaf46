"""Webhook endpoints and their deliveries on the wire."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.common import PublicModel
from loraq.core.text import PlainText
from loraq.webhooks.service import EventType


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[PlainText, Field(min_length=1, max_length=2048)]
    event_types: Annotated[list[EventType], Field(min_length=1, max_length=5)]
    description: Annotated[PlainText, Field(max_length=512)] | None = None


class WebhookEndpointPublic(PublicModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    event_types: list[str]
    description: str | None
    created_at: int


class WebhookEndpointWithSecret(WebhookEndpointPublic):
    # Shown on create and rotate only; receivers verify deliveries with it (Standard Webhooks).
    secret: str


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookAttemptPublic(PublicModel):
    attempted_at: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    duration_ms: int


class WebhookDeliveryPublic(PublicModel):
    id: str  # also the webhook-id header of each of its attempts
    object: Literal["webhook.delivery"] = "webhook.delivery"
    event: dict[str, Any] = Field(validation_alias="payload")
    status: Literal["pending", "succeeded", "failed"]
    next_attempt_at: float | None
    created_at: int
    attempts: list[WebhookAttemptPublic] = []

    @field_validator("event", mode="before")
    @classmethod
    def _parse_payload(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value
