"""/v1/webhooks: a project's endpoints, their signing secrets, and what was delivered to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query

from api.bodies import JSONBodyRoute
from api.deps import Cursor, ObjectId, ProjectId, SessionDep, SettingsDep
from api.schemas.common import ListPublic, list_of
from api.schemas.webhooks import (
    WebhookAttemptPublic,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointPublic,
    WebhookEndpointWithSecret,
)
from loraq.webhooks import repository, service
from loraq.webhooks.destinations import Policy
from loraq.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=JSONBodyRoute)

Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=WebhookEndpointWithSecret)
def create_endpoint(
    body: WebhookEndpointCreate, project_id: ProjectId, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    """Register an endpoint; the answer holds its signing secret, shown this once."""
    endpoint, secret = service.create_endpoint(
        session,
        project_id=project_id,
        url=body.url,
        event_types=body.event_types,
        description=body.description,
        policy=Policy.from_settings(settings),
        secrets_key=settings.webhook_secrets_key.get_secret_value(),
    )
    return _with_secret(endpoint, secret)


@router.get("", response_model=ListPublic[WebhookEndpointPublic])
def list_endpoints(
    project_id: ProjectId, session: SessionDep, after: Cursor = None, limit: Limit = 20
) -> ListPublic[WebhookEndpointPublic]:
    page = repository.list_endpoints(session, project_id=project_id, after=after, limit=limit)
    return list_of(page, WebhookEndpointPublic.model_validate)


@router.get("/{webhook_id}", response_model=WebhookEndpointPublic)
def get_endpoint(webhook_id: ObjectId, project_id: ProjectId, session: SessionDep) -> WebhookEndpointPublic:
    return WebhookEndpointPublic.model_validate(
        repository.get_endpoint(session, project_id=project_id, endpoint_id=webhook_id)
    )


@router.delete("/{webhook_id}", response_model=WebhookEndpointDeleted)
def delete_endpoint(
    webhook_id: ObjectId, project_id: ProjectId, session: SessionDep
) -> WebhookEndpointDeleted:
    endpoint = service.delete_endpoint(session, project_id=project_id, endpoint_id=webhook_id)
    return WebhookEndpointDeleted(id=endpoint.id)


@router.post("/{webhook_id}/rotate_secret", response_model=WebhookEndpointWithSecret)
def rotate_secret(
    webhook_id: ObjectId, project_id: ProjectId, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    """A new signing secret, shown this once; the old one signs nothing more."""
    endpoint, secret = service.rotate_secret(
        session,
        project_id=project_id,
        endpoint_id=webhook_id,
        secrets_key=settings.webhook_secrets_key.get_secret_value(),
    )
    return _with_secret(endpoint, secret)


@router.get("/{webhook_id}/deliveries", response_model=ListPublic[WebhookDeliveryPublic])
def list_deliveries(
    webhook_id: ObjectId, project_id: ProjectId, session: SessionDep, after: Cursor = None, limit: Limit = 20
) -> ListPublic[WebhookDeliveryPublic]:
    """The endpoint's deliveries, newest first, each with its event, status and attempts."""
    page, attempts = service.list_deliveries(
        session, project_id=project_id, endpoint_id=webhook_id, after=after, limit=limit
    )
    return list_of(page, lambda delivery: _public(delivery, attempts[delivery.id]))


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", response_model=WebhookDeliveryPublic)
def redeliver(
    webhook_id: ObjectId, delivery_id: ObjectId, project_id: ProjectId, session: SessionDep
) -> WebhookDeliveryPublic:
    """Send a delivery again now, whatever it came to (same webhook-id, so receivers can drop duplicates)."""
    delivery, attempts = service.redeliver(
        session, project_id=project_id, endpoint_id=webhook_id, delivery_id=delivery_id
    )
    return _public(delivery, attempts)


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(
        **WebhookEndpointPublic.model_validate(endpoint).model_dump(), secret=secret
    )


def _public(delivery: WebhookDelivery, attempts: Sequence[WebhookAttempt]) -> WebhookDeliveryPublic:
    public = WebhookDeliveryPublic.model_validate(delivery)
    public.attempts = [WebhookAttemptPublic.model_validate(attempt) for attempt in attempts]
    return public
