"""Idempotency-Key: a retried create with the same key and body gets the first answer, not a second object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loraq.core.errors import Conflict, InvalidRequest
from loraq.projects import repository
from loraq.projects.tables import IdempotencyRecord

MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"


def fingerprint(*parts: Any) -> str:
    """A stable hash of what makes two requests the same."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def create_once(
    session: Session,
    *,
    project_id: str,
    key: str | None,
    endpoint: str,
    request_fingerprint: Callable[[], str],
    create: Callable[[], tuple[dict[str, Any], str]],
) -> dict[str, Any]:
    """Run `create` (giving the answer and its request fingerprint) unless this key has an answer.

    The same key with the same request replays the first answer; with another request it is a 409.
    The record is written in the create's own transaction, so an answer exists iff its object does.
    """
    if key is None:
        return create()[0]
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters", param=HEADER)
    record = repository.idempotency_record(session, project_id=project_id, key=key)
    if record is not None:
        if record.endpoint != endpoint or record.request_sha256 != request_fingerprint():
            raise Conflict(
                f"this {HEADER} was already used with a different request; use a new key for a new request",
                param=HEADER,
                code="idempotency_key_reused",
            )
        return record.response
    response, request_sha256 = create()
    try:
        repository.add_idempotency_record(
            session,
            IdempotencyRecord(
                project_id=project_id,
                key=key,
                endpoint=endpoint,
                request_sha256=request_sha256,
                response=response,
            ),
        )
    except IntegrityError as race:
        raise Conflict(f"another request with this {HEADER} is in progress; retry it", param=HEADER) from race
    return response
