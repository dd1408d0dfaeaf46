"""Every SQL statement that touches chat requests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from loraq.chat.tables import ChatRequest, ChatStatus


def add_request(session: Session, request: ChatRequest) -> ChatRequest:
    session.add(request)
    session.flush()
    return request


def get_request(session: Session, *, project_id: str, request_id: str) -> ChatRequest | None:
    return session.scalars(
        select(ChatRequest).where(ChatRequest.project_id == project_id, ChatRequest.id == request_id)
    ).one_or_none()


def delete_request(session: Session, *, project_id: str, request_id: str) -> None:
    session.execute(
        delete(ChatRequest).where(ChatRequest.project_id == project_id, ChatRequest.id == request_id)
    )


def delete_created_before(session: Session, created_before: int) -> None:
    """Requests no API process waits for any more (it crashed mid-wait)."""
    session.execute(delete(ChatRequest).where(ChatRequest.created_at < created_before))


def claim(session: Session, request_id: str) -> ChatRequest | None:
    """The queued request, now marked running by this worker; None if it is gone or already taken."""
    taken = session.execute(
        update(ChatRequest)
        .where(ChatRequest.id == request_id, ChatRequest.status == ChatStatus.QUEUED)
        .values(status=ChatStatus.RUNNING)
    )
    if getattr(taken, "rowcount", 0) != 1:
        return None
    return session.scalars(select(ChatRequest).where(ChatRequest.id == request_id)).one()


def finish(
    session: Session, request_id: str, *, result: dict[str, Any] | None, error: dict[str, Any] | None
) -> None:
    """Write the answer (or the error) for the waiting API; a request it gave up on is gone already."""
    session.execute(
        update(ChatRequest)
        .where(ChatRequest.id == request_id, ChatRequest.status == ChatStatus.RUNNING)
        .values(status=ChatStatus.FAILED if error else ChatStatus.DONE, result=result, error=error)
    )
