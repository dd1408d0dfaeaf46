"""Webhook endpoints as a project manages them, and the outbox of events the workers deliver.

At least once: a job's state change and the deliveries of its event are written in one transaction
(`enqueue_job_event`, called by the change itself), so an event cannot be lost by a process dying
between the two; a sender then claims each delivery, posts it, and retries it on a schedule.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from sqlalchemy.orm import Session

from loraq.core.errors import InvalidRequest
from loraq.core.ids import new_id, unix_seconds
from loraq.core.repository import Page
from loraq.projects import repository as projects_repository
from loraq.webhooks import repository
from loraq.webhooks.destinations import Attempt, Policy, check_url
from loraq.webhooks.sealing import seal
from loraq.webhooks.signing import new_secret
from loraq.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint

# OpenAI's fine-tuning events, and loraq's own two.
EventType = Literal[
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.running",
    "fine_tuning.job.checkpoint",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
# Seconds before each retry: a receiver that is down for up to a day still gets the event (26 h in all).
RETRY_DELAYS = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 36000)
MAX_ENDPOINTS_PER_PROJECT = 20


def create_endpoint(
    session: Session,
    *,
    project_id: str,
    url: str,
    event_types: Sequence[str],
    description: str | None,
    policy: Policy,
    secrets_key: str,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; its signing secret is returned beside it, for the caller to show this once."""
    check_url(url, policy)  # before the lock: it may wait on DNS
    projects_repository.lock(session, project_id)  # two creates at once cannot both take the last place
    if repository.count_endpoints(session, project_id) >= MAX_ENDPOINTS_PER_PROJECT:
        raise InvalidRequest(
            f"a project may have at most {MAX_ENDPOINTS_PER_PROJECT} webhook endpoints; delete one first",
            code="limit_exceeded",
        )
    secret = new_secret()
    endpoint = WebhookEndpoint(
        project_id=project_id,
        url=url,
        event_types=list(dict.fromkeys(event_types)),
        description=description,
        secret=seal(secret, secrets_key),
    )
    repository.add(session, endpoint)
    session.flush()
    return endpoint, secret


def rotate_secret(
    session: Session, *, project_id: str, endpoint_id: str, secrets_key: str
) -> tuple[WebhookEndpoint, str]:
    """A new secret from now on: deliveries not yet sent are signed with it too."""
    endpoint = repository.get_endpoint(session, project_id=project_id, endpoint_id=endpoint_id)
    secret = new_secret()
    endpoint.secret = seal(secret, secrets_key)
    session.flush()
    return endpoint, secret


def delete_endpoint(session: Session, *, project_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = repository.get_endpoint(session, project_id=project_id, endpoint_id=endpoint_id)
    repository.delete_endpoint(session, endpoint)
    return endpoint


def enqueue_job_event(session: Session, *, job_id: str, type: EventType) -> int:
    """Queue the event for each endpoint of the job's project that asked for it, in the caller's
    transaction; how many deliveries that made."""
    found = repository.job_project_and_start(session, job_id)
    if found is None:
        return 0
    endpoints = [e for e in repository.endpoints_of(session, found[0]) if type in e.event_types]
    if not endpoints:
        return 0
    # OpenAI's event shape: a receiver written for its fine-tuning webhooks reads these unchanged.
    event = {
        "id": new_id("evt_"),
        "object": "event",
        "type": type,
        "created_at": unix_seconds(),
        "data": {"id": job_id},
    }
    payload = json.dumps(event, separators=(",", ":"))
    now = time.time()
    for endpoint in endpoints:
        repository.add(
            session,
            WebhookDelivery(
                endpoint_id=endpoint.id,
                event_id=event["id"],
                event_type=type,
                payload=payload,
                next_attempt_at=now,
            ),
        )
    return len(endpoints)


def job_never_started(session: Session, job_id: str) -> bool:
    """Whether the job has yet to start running for the first time (its `running` event is still due)."""
    found = repository.job_project_and_start(session, job_id)
    return found is not None and found[1] is None


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery: what to send where, and the token that proves the claim is still ours."""

    delivery_id: str
    url: str
    sealed_secret: str  # as stored: sealing.unseal gives the secret to sign with
    payload: str
    tries: int
    token: str


def claim_next(session: Session, *, lease_seconds: float, candidates: int = 5) -> Outgoing | None:
    """Take the next due delivery for `lease_seconds` (it is due again after that if not finished)."""
    now = time.time()
    token = secrets.token_hex(16)
    for delivery_id in repository.due_delivery_ids(session, now=now, limit=candidates):
        if repository.claim(session, delivery_id, now=now, until=now + lease_seconds, token=token):
            delivery, endpoint = repository.claimed(session, delivery_id)
            return Outgoing(
                delivery.id, endpoint.url, endpoint.secret, delivery.payload, delivery.tries, token
            )
    return None


def record_attempt(session: Session, outgoing: Outgoing, attempt: Attempt, *, retry_scale: float) -> str:
    """Log the attempt and settle the delivery: succeeded, retried later, or failed; its new status."""
    now = time.time()
    repository.add(
        session,
        WebhookAttempt(
            delivery_id=outgoing.delivery_id,
            attempted_at=now - attempt.duration_ms / 1000,
            status_code=attempt.status_code,
            error=attempt.error,
            response_excerpt=attempt.response_excerpt,
            duration_ms=attempt.duration_ms,
        ),
    )
    tries = outgoing.tries + 1
    if attempt.succeeded:
        status, next_attempt_at = "succeeded", None
    elif tries > len(RETRY_DELAYS):
        status, next_attempt_at = "failed", None
    else:
        status, next_attempt_at = "pending", now + RETRY_DELAYS[tries - 1] * retry_scale
    repository.finish_claim(
        session,
        outgoing.delivery_id,
        token=outgoing.token,
        status=status,
        tries=tries,
        next_attempt_at=next_attempt_at,
    )
    return status


def list_deliveries(
    session: Session, *, project_id: str, endpoint_id: str, after: str | None, limit: int
) -> tuple[Page[WebhookDelivery], dict[str, list[WebhookAttempt]]]:
    """A page of the endpoint's deliveries, newest first, and each one's attempts, oldest first."""
    endpoint = repository.get_endpoint(session, project_id=project_id, endpoint_id=endpoint_id)
    page = repository.list_deliveries(session, endpoint_id=endpoint.id, after=after, limit=limit)
    attempts: dict[str, list[WebhookAttempt]] = {delivery.id: [] for delivery in page.items}
    for attempt in repository.attempts_of(session, list(attempts)):
        attempts[attempt.delivery_id].append(attempt)
    return page, attempts


def redeliver(
    session: Session, *, project_id: str, endpoint_id: str, delivery_id: str
) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    """Send a delivery again now, whatever it came to, with a fresh retry schedule and the same webhook-id."""
    endpoint = repository.get_endpoint(session, project_id=project_id, endpoint_id=endpoint_id)
    delivery = repository.get_delivery(session, endpoint_id=endpoint.id, delivery_id=delivery_id)
    delivery.status, delivery.tries, delivery.next_attempt_at = "pending", 0, time.time()
    delivery.claim_token = None  # an attempt in flight now settles nothing; its log line stays
    session.flush()
    return delivery, list(repository.attempts_of(session, [delivery.id]))


# Deleted per pass at most, so one pass is a short transaction however large the backlog.
PRUNE_BATCH = 1000


def prune_deliveries(session: Session, *, retention_days: float) -> int:
    """Delete settled deliveries (and their attempts) older than retention_days; how many. 0 keeps all."""
    if retention_days <= 0:
        return 0
    created_before = int(time.time() - retention_days * 86_400)
    return repository.delete_finished_deliveries(session, created_before=created_before, limit=PRUNE_BATCH)
