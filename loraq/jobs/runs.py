"""What a worker does to a job it runs: claim it under a lease, keep the lease, record, finish.

Every write is conditional on the worker still holding the lease, in the write's own transaction
(a conditional UPDATE of the job's row first, which also locks it until the commit), so a worker
whose job was cancelled or taken over changes nothing, however late its writes come.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, func
from sqlalchemy.orm import Session

from loraq.jobs import repository
from loraq.jobs.events import add_event
from loraq.jobs.states import JobStatus, Lease
from loraq.jobs.tables import Checkpoint, Job


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
    repository.lock_project_of(session, job_id)
    claimable = repository.claimable()
    won = repository.transition(
        session,
        job_id,
        JobStatus.RUNNING,
        extra_condition=and_(
            claimable, Job.attempts < max_attempts, repository.under_running_limit(default_running_limit)
        ),
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
    if repository.transition(
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
    return repository.renew_lease(session, lease, lease_seconds=lease_seconds)


def holds(session: Session, lease: Lease) -> bool:
    return repository.lease_holder(session, lease.job_id) == lease.owner


def record_progress(session: Session, lease: Lease, progress: dict[str, Any]) -> bool:
    """Store the job's progress if still ours; True when it did."""
    return repository.lock_leased(session, lease, progress=progress)


def record_metrics(session: Session, lease: Lease, *, step: int, metrics: dict[str, Any]) -> bool:
    """Add a step's metrics event if still ours; True when it did."""
    if not repository.lock_leased(session, lease):
        return False
    shown = ", ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in metrics.items()
    )
    add_event(session, lease.job_id, f"Step {step}: {shown}", type="metrics", data={"step": step, **metrics})
    return True


def add_checkpoint(
    session: Session,
    lease: Lease,
    *,
    step: int,
    metrics: dict[str, Any],
    storage_key: str,
    result_file: str | None = None,
) -> bool:
    """Record a stored checkpoint if still ours; True when it did (else the caller rolls back its blobs)."""
    # Progress was saved: a later crash is a new failure, not one more of the same. Attempts count
    # only the deaths in a row that saved nothing, so a long job survives many unrelated restarts.
    if not repository.lock_leased(session, lease, attempts=1):
        return False
    repository.add_checkpoint(
        session,
        Checkpoint(
            job_id=lease.job_id,
            step_number=step,
            metrics=metrics,
            storage_key=storage_key,
            result_file=result_file,
        ),
    )
    add_event(
        session,
        lease.job_id,
        f"Checkpoint saved at step {step}",
        data={"step": step, "result_file": result_file},
    )
    return True


def resume(session: Session, lease: Lease, *, from_step: int) -> bool:
    """Note that the job resumes from its checkpoint at `from_step`, if still ours; True when it did.

    The steps past the checkpoint are trained again, so the metrics the dead run logged for them go:
    the job keeps one metrics event a step, the run that produced its weights.
    """
    if not repository.lock_leased(session, lease):
        return False
    repository.delete_metrics_after(session, lease.job_id, from_step)
    add_event(
        session,
        lease.job_id,
        f"Resuming from the checkpoint at step {from_step}",
        data={"resumed_from_step": from_step},
    )
    return True


def succeed(
    session: Session, lease: Lease, *, result_files: list[str], fine_tuned_model: str, trained_tokens: int
) -> bool:
    won = repository.transition(
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
    won = repository.transition(
        session, job_id, JobStatus.FAILED, lease=lease, values={"error": _error(message, code)}
    )
    if won:
        add_event(session, job_id, f"Job failed: {message}", level="error")
    return won


def cancel(session: Session, job_id: str) -> bool:
    won = repository.transition(session, job_id, JobStatus.CANCELLED)
    if won:
        add_event(session, job_id, "Job cancelled")
    return won


def jobs_to_publish(session: Session, *, republish_after: float) -> list[str]:
    """Jobs a worker should be told about (the reconciler's scan); marks them published."""
    return repository.mark_jobs_to_publish(session, republish_after=republish_after)


def _error(message: str, code: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None}
