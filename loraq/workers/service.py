"""Worker registration and liveness: a worker registers at start and heartbeats from its main process."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy.orm import Session

from loraq.core.settings import Settings
from loraq.workers import repository
from loraq.workers.tables import Worker


def register(
    session: Session, *, worker_id: str, hostname: str, pid: int, device: str, compute_dtype: str
) -> Worker:
    worker = Worker(
        id=worker_id,
        hostname=hostname,
        pid=pid,
        device=device,
        compute_dtype=compute_dtype,
        heartbeat_at=time.time(),
    )
    repository.add(session, worker)
    return worker


def beat(session: Session, *, worker_id: str) -> bool:
    return repository.beat(session, worker_id)


def stopped(session: Session, *, worker_id: str) -> None:
    repository.mark_stopped(session, worker_id)


def live_workers(session: Session, *, settings: Settings) -> Sequence[Worker]:
    """Workers heard from within one lease: a worker silent that long would have lost its jobs too."""
    return repository.live(session, heard_within=settings.lease_seconds)


def recent_workers(session: Session, *, limit: int = 100) -> Sequence[Worker]:
    return repository.recent(session, limit=limit)
