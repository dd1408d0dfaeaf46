"""A job's event log: what happened to it, in words (type "message") or numbers (type "metrics")."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy.orm import Session

from loraq.jobs import repository
from loraq.jobs.tables import JobEvent


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: Literal["info", "warn", "error"] = "info",
    type: Literal["message", "metrics"] = "message",
    data: dict[str, Any] | None = None,
) -> None:
    repository.add_event(session, JobEvent(job_id=job_id, message=message, level=level, type=type, data=data))
