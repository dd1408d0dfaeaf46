"""Every SQL statement that touches webhook endpoints, deliveries and attempts.

Tenant reads go through `readable_endpoints`; a delivery is reached only through its endpoint. The
senders take a delivery with a conditional UPDATE (`claim`), so two workers never send the same attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from loraq.core.errors import NotFound
from loraq.core.repository import Page, paginate
from loraq.jobs.tables import Job
from loraq.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint

PENDING = "pending"


def readable_endpoints(project_id: str) -> Select[Any]:
    return select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id)


def get_endpoint(session: Session, *, project_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.scalars(
        readable_endpoints(project_id).where(WebhookEndpoint.id == endpoint_id)
    ).one_or_none()
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: {endpoint_id}", param="webhook_id")
    return endpoint


def list_endpoints(session: Session, *, project_id: str, after: str | None, limit: int) -> Page[Any]:
    return paginate(session, readable_endpoints(project_id), WebhookEndpoint, after=after, limit=limit)


def endpoints_of(session: Session, project_id: str) -> Sequence[WebhookEndpoint]:
    return session.scalars(readable_endpoints(project_id).order_by(WebhookEndpoint.seq)).all()


def count_endpoints(session: Session, project_id: str) -> int:
    return int(session.scalar(select(func.count()).where(WebhookEndpoint.project_id == project_id)) or 0)


def add(session: Session, row: WebhookEndpoint | WebhookDelivery | WebhookAttempt) -> None:
    session.add(row)


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Its deliveries and their attempts go with it (ON DELETE CASCADE)."""
    session.delete(endpoint)
    session.flush()


def job_project_and_start(session: Session, job_id: str) -> tuple[str, int | None] | None:
    """The job's project, and when it first started (None if never)."""
    row = session.execute(select(Job.project_id, Job.started_at).where(Job.id == job_id)).one_or_none()
    return (row[0], row[1]) if row is not None else None


def list_deliveries(session: Session, *, endpoint_id: str, after: str | None, limit: int) -> Page[Any]:
    statement = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return paginate(session, statement, WebhookDelivery, after=after, limit=limit)


def get_delivery(session: Session, *, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
    delivery = session.scalars(
        select(WebhookDelivery).where(
            WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.id == delivery_id
        )
    ).one_or_none()
    if delivery is None:
        raise NotFound(f"No such delivery: {delivery_id}", param="delivery_id")
    return delivery


def attempts_of(session: Session, delivery_ids: Sequence[str]) -> Sequence[WebhookAttempt]:
    """The attempts of these deliveries, oldest first."""
    if not delivery_ids:
        return []
    return session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.seq)
    ).all()


def due_delivery_ids(session: Session, *, now: float, limit: int) -> list[str]:
    """Pending deliveries whose time has come, soonest first; system-wide (senders serve every project)."""
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )


def claim(session: Session, delivery_id: str, *, now: float, until: float, token: str) -> bool:
    """Take a due delivery until `until`; False when another sender took it first."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=until, claim_token=token)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def claimed(session: Session, delivery_id: str) -> tuple[WebhookDelivery, WebhookEndpoint]:
    row = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
    ).one()
    return row[0], row[1]


def finish_claim(session: Session, delivery_id: str, *, token: str, **values: Any) -> bool:
    """Write an attempt's outcome if the claim is still ours (not redelivered by hand meanwhile)."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.claim_token == token,
            WebhookDelivery.status == PENDING,
        )
        .values(claim_token=None, **values)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def delete_finished_deliveries(session: Session, *, created_before: int, limit: int) -> int:
    """Delete up to `limit` settled (succeeded or failed) deliveries made before `created_before`, with
    their attempts, oldest first; how many. Pending ones stay, however old: they still have tries left."""
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status != PENDING, WebhookDelivery.created_at < created_before)
            .order_by(WebhookDelivery.seq)
            .limit(limit)
        )
    )
    if ids:
        # Explicit, not left to ON DELETE CASCADE: SQLite enforces it only with its foreign_keys pragma.
        session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)))
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
    return len(ids)
