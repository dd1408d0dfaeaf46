"""The job state machine: every status change goes through `transition`, a conditional UPDATE.

The WHERE clause holds the rules (which states a target may be reached from, and for a
worker, that it still holds the lease), so two processes racing cannot both win.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from loraq.models import Checkpoint, Job, JobEvent, Project


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING})

# target status -> the statuses it may be reached from
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.VALIDATING_FILES}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    JobStatus.FAILED: ACTIVE,
    JobStatus.CANCELLED: ACTIVE,
}


class Lease:
    """A worker's claim on a job: who holds it, for which job."""

    def __init__(self, job_id: str, owner: str) -> None:
        self.job_id = job_id
        self.owner = owner


def transition(
    session: Session,
    job_id: str,
    to: JobStatus,
    *,
    lease: Lease | None = None,
    extra_condition: Any = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move a job to `to` if the rules allow it now; True when this call made the change."""
    conditions = [Job.id == job_id, Job.status.in_([s.value for s in ALLOWED_FROM[to]])]
    if lease is not None:
        conditions.append(Job.lease_owner == lease.owner)
    if extra_condition is not None:
        conditions.append(extra_condition)
    changes: dict[str, Any] = {"status": to.value, **(values or {})}
    if to in TERMINAL:
        changes.update(finished_at=int(time.time()), lease_owner=None, lease_expires_at=None)
    result = session.execute(update(Job).where(*conditions).values(**changes))
    return bool(getattr(result, "rowcount", 0) == 1)


def claim(
    session: Session,
    job_id: str,
    *,
    owner: str,
    lease_seconds: float,
    max_attempts: int,
    default_running_limit: int = 1_000_000,
) -> Lease | None:
    """Take a queued job, or a running one whose worker's lease expired; None if not ours to run now.

    A job also waits (stays queued) while its project already runs as many jobs as it may.
    """
    now = time.time()
    claimable = or_(
        Job.status == JobStatus.QUEUED.value,
        and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
    )
    # Serialize claims within a project (Postgres row lock), so two workers can't both take the last slot.
    session.execute(
        select(Project.id)
        .where(Project.id == select(Job.project_id).where(Job.id == job_id).scalar_subquery())
        .with_for_update()
    )
    others = aliased(Job)
    running_elsewhere = (
        select(func.count())
        .where(
            others.project_id == Job.project_id, others.status == JobStatus.RUNNING.value, others.id != Job.id
        )
        .scalar_subquery()
    )
    project_limit = (
        select(func.coalesce(Project.max_running_jobs, default_running_limit))
        .where(Project.id == Job.project_id)
        .scalar_subquery()
    )
    won = transition(
        session,
        job_id,
        JobStatus.RUNNING,
        extra_condition=and_(claimable, Job.attempts < max_attempts, running_elsewhere < project_limit),
        values={
            "lease_owner": owner,
            "lease_expires_at": now + lease_seconds,
            "attempts": Job.attempts + 1,
            "started_at": func.coalesce(Job.started_at, int(now)),
        },
    )
    if won:
        return Lease(job_id, owner)
    # Claimable but out of attempts: its workers keep dying (out of memory, say). Stop the loop.
    if transition(
        session,
        job_id,
        JobStatus.FAILED,
        extra_condition=and_(claimable, Job.attempts >= max_attempts),
        values={
            "error": _error(
                f"the job's worker stopped {max_attempts} times in a row without saving a checkpoint "
                "(out of memory, or killed?); giving up",
                "worker_lost",
            )
        },
    ):
        add_event(session, job_id, "Job failed: its worker died on every attempt", level="error")
    return None


def renew(session: Session, lease: Lease, *, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer ours (cancelled, or taken over)."""
    result = session.execute(
        update(Job)
        .where(Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status == JobStatus.RUNNING.value)
        .values(lease_expires_at=time.time() + lease_seconds)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def holds(session: Session, lease: Lease) -> bool:
    owner = session.scalar(
        select(Job.lease_owner).where(Job.id == lease.job_id, Job.status == JobStatus.RUNNING.value)
    )
    return owner == lease.owner


def record_progress(session: Session, lease: Lease, progress: dict[str, Any]) -> None:
    session.execute(
        update(Job).where(Job.id == lease.job_id, Job.lease_owner == lease.owner).values(progress=progress)
    )


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(JobEvent(job_id=job_id, message=message, level=level, type=type, data=data))


def add_checkpoint(
    session: Session,
    lease: Lease,
    *,
    step: int,
    metrics: dict[str, Any],
    storage_key: str,
    result_file: str | None = None,
) -> None:
    session.add(
        Checkpoint(
            job_id=lease.job_id,
            step_number=step,
            metrics=metrics,
            storage_key=storage_key,
            result_file=result_file,
        )
    )
    # Progress was saved: a later crash is a new failure, not one more of the same. Attempts count
    # only the deaths in a row that saved nothing, so a long job survives many unrelated restarts.
    session.execute(
        update(Job).where(Job.id == lease.job_id, Job.lease_owner == lease.owner).values(attempts=1)
    )


def succeed(
    session: Session, lease: Lease, *, result_files: list[str], fine_tuned_model: str, trained_tokens: int
) -> bool:
    won = transition(
        session,
        lease.job_id,
        JobStatus.SUCCEEDED,
        lease=lease,
        values={
            "result_files": result_files,
            "fine_tuned_model": fine_tuned_model,
            "trained_tokens": trained_tokens,
        },
    )
    if won:
        add_event(session, lease.job_id, "The job has successfully completed")
    return won


def fail(session: Session, job_id: str, message: str, *, code: str, lease: Lease | None = None) -> bool:
    won = transition(session, job_id, JobStatus.FAILED, lease=lease, values={"error": _error(message, code)})
    if won:
        add_event(session, job_id, f"Job failed: {message}", level="error")
    return won


def cancel(session: Session, job_id: str) -> bool:
    won = transition(session, job_id, JobStatus.CANCELLED)
    if won:
        add_event(session, job_id, "Job cancelled")
    return won


def _error(message: str, code: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None}


def jobs_to_publish(session: Session, *, republish_after: float) -> list[str]:
    """Jobs a worker should be told about: queued and not published lately, or running on an expired lease.

    System-wide (the reconciler serves every project); never exposed through the API.
    """
    now = time.time()
    last_published = func.coalesce(Job.published_at, Job.created_at)
    stale_queued = and_(Job.status == JobStatus.QUEUED.value, last_published < now - republish_after)
    orphaned = and_(
        Job.status == JobStatus.RUNNING.value,
        Job.lease_expires_at < now,
        last_published < now - republish_after,
    )
    ids = list(session.scalars(select(Job.id).where(or_(stale_queued, orphaned)).order_by(Job.seq)))
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids)).values(published_at=now))
    return ids


def count_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status, across all projects: for operators' metrics, never the API."""
    return {
        status: count
        for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status))
    }
