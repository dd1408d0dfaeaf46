"""Every SQL statement that touches the workers table."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from loraq.workers.tables import Worker


def add(session: Session, worker: Worker) -> None:
    session.add(worker)
    session.flush()


def beat(session: Session, worker_id: str) -> bool:
    """Record that the worker is alive now; False when it was never registered (or was forgotten)."""
    result = session.execute(
        update(Worker).where(Worker.id == worker_id).values(heartbeat_at=time.time(), stopped_at=None)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def mark_stopped(session: Session, worker_id: str) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=int(time.time())))


def live(session: Session, *, heard_within: float) -> Sequence[Worker]:
    """Workers that heartbeat within the last `heard_within` seconds and did not say they stopped."""
    return session.scalars(
        select(Worker)
        .where(Worker.heartbeat_at >= time.time() - heard_within, Worker.stopped_at.is_(None))
        .order_by(Worker.seq)
    ).all()


def recent(session: Session, *, limit: int) -> Sequence[Worker]:
    return session.scalars(select(Worker).order_by(Worker.heartbeat_at.desc()).limit(limit)).all()
