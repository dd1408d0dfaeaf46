"""What a worker does to a job it runs: claim it under a lease, keep the lease, record, finish.

Every write is conditional on the worker still holding the lease, in the write's own transaction
(a conditional UPDATE of the job's row first, which also locks it until the commit), so a worker
whose job was cancelled or taken over changes nothing, however late its writes come.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import and_, func
from sqlalchemy.orm import Session

from loraq.files import repository as files_repository
from loraq.jobs import repository
from loraq.jobs.events import add_event
from loraq.jobs.states import JobStatus, Lease
from loraq.jobs.tables import Checkpoint, Job, JobSample
from loraq.projects import repository as projects_repository
from loraq.webhooks import service as webhooks


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
    project_id = repository.project_of(session, job_id)
    if project_id is None:
        return None
    # Under the project's lock, as its other limits: two workers can't both take its last running slot.
    projects_repository.lock(session, project_id)
    claimable = repository.claimable()
    first_start = webhooks.job_never_started(session, job_id)  # read before the claim sets started_at
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
        if first_start:
            webhooks.enqueue_job_event(session, job_id=job_id, type="fine_tuning.job.running")
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
        webhooks.enqueue_job_event(session, job_id=job_id, type="fine_tuning.job.failed")
    return None


def renew(session: Session, lease: Lease, *, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer ours (cancelled, or taken over)."""
    return repository.renew_lease(session, lease, lease_seconds=lease_seconds)


def holds(session: Session, lease: Lease) -> bool:
    return repository.lease_holder(session, lease.job_id) == lease.owner


def record_reports(
    session: Session,
    lease: Lease,
    *,
    progress: dict[str, Any] | None = None,
    metrics: Sequence[tuple[int, dict[str, Any]]] = (),
) -> bool:
    """Store the latest progress and a batch of steps' metrics events in one transaction, if still ours."""
    if not repository.lock_leased(session, lease, **({"progress": progress} if progress is not None else {})):
        return False
    for step, step_metrics in metrics:
        shown = ", ".join(
            f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in step_metrics.items()
        )
        add_event(
            session,
            lease.job_id,
            f"Step {step}: {shown}",
            type="metrics",
            data={"step": step, **step_metrics},
        )
    return True


def record_baseline(
    session: Session,
    lease: Lease,
    *,
    evaluation: dict[str, Any] | None,
    base_samples: list[dict[str, Any]],
) -> bool:
    """Store the base model's valid loss and answers, measured before step 1, if still ours."""
    if not repository.lock_leased(session, lease, evaluation=evaluation, base_samples=base_samples):
        return False
    if evaluation is not None:
        add_event(
            session,
            lease.job_id,
            f"Base model evaluated: valid_loss={evaluation['base_valid_loss']:.4g}",
            data={"step": 0, "base_valid_loss": evaluation["base_valid_loss"]},
        )
    return True


def record_evaluation(
    session: Session,
    lease: Lease,
    *,
    step: int,
    evaluation: dict[str, Any] | None,
    samples: list[dict[str, Any]],
) -> bool:
    """Store the job's evaluation and the tuned adapter's answers at `step`, if still ours."""
    if not repository.lock_leased(session, lease, evaluation=evaluation):
        return False
    # Listed newest first: added last to first, so that a step's answers read in their input order.
    rows = [JobSample(job_id=lease.job_id, step=step, **sample) for sample in reversed(samples)]
    repository.replace_samples(session, lease.job_id, step, rows)
    return True


def add_checkpoint(
    session: Session,
    lease: Lease,
    *,
    step: int,
    metrics: dict[str, Any],
    storage_key: str,
    resume_bytes: int,
    result_file: str | None = None,
    keep_bundles: int,
) -> list[str] | None:
    """Record a stored checkpoint if still ours, and let go of what it makes stale.

    None when the job is no longer ours (the caller rolls back its blobs). Otherwise the storage keys
    to delete once this commits: the older checkpoints' resume state (a run resumes from the newest
    only) and the downloadable adapters of all but the newest `keep_bundles` checkpoints.
    """
    # Progress was saved: a later crash is a new failure, not one more of the same. Attempts count
    # only the deaths in a row that saved nothing, so a long job survives many unrelated restarts.
    if not repository.lock_leased(session, lease, attempts=1):
        return None
    stale = []
    for older in repository.checkpoints_with_resume_state(session, lease.job_id):
        stale.append(older.storage_key)
        older.storage_key = None
    repository.add_checkpoint(
        session,
        Checkpoint(
            job_id=lease.job_id,
            step_number=step,
            metrics=metrics,
            storage_key=storage_key,
            resume_bytes=resume_bytes,
            result_file=result_file,
        ),
    )
    session.flush()
    pruned = repository.checkpoints_with_bundles(session, lease.job_id)[keep_bundles:]
    pruned_files = [checkpoint.result_file for checkpoint in pruned if checkpoint.result_file]
    for checkpoint in pruned:
        checkpoint.result_file = None
    stale += files_repository.delete_by_ids(session, pruned_files)
    add_event(
        session,
        lease.job_id,
        f"Checkpoint saved at step {step}",
        data={"step": step, "result_file": result_file},
    )
    webhooks.enqueue_job_event(session, job_id=lease.job_id, type="fine_tuning.job.checkpoint")
    return [key for key in stale if key is not None]


def resume(session: Session, lease: Lease, *, from_step: int) -> bool:
    """Note that the job resumes from its checkpoint at `from_step`, if still ours; True when it did.

    The steps past the checkpoint are trained again, so the metrics the dead run logged for them go:
    the job keeps one metrics event a step, the run that produced its weights.
    """
    if not repository.lock_leased(session, lease):
        return False
    repository.delete_metrics_after(session, lease.job_id, from_step)
    repository.delete_samples_after(session, lease.job_id, from_step)
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
        webhooks.enqueue_job_event(session, job_id=lease.job_id, type="fine_tuning.job.succeeded")
    return won


def fail(session: Session, job_id: str, message: str, *, code: str, lease: Lease | None = None) -> bool:
    won = repository.transition(
        session, job_id, JobStatus.FAILED, lease=lease, values={"error": _error(message, code)}
    )
    if won:
        add_event(session, job_id, f"Job failed: {message}", level="error")
        webhooks.enqueue_job_event(session, job_id=job_id, type="fine_tuning.job.failed")
    return won


def cancel(session: Session, job_id: str) -> bool:
    won = repository.transition(session, job_id, JobStatus.CANCELLED)
    if won:
        add_event(session, job_id, "Job cancelled")
        webhooks.enqueue_job_event(session, job_id=job_id, type="fine_tuning.job.cancelled")
    return won


def release_finished_resume_states(
    session: Session, *, delete: Callable[[str], None], limit: int = 100
) -> int:
    """Delete the resume state that finished jobs still keep; how many were deleted.

    Each blob goes before its row forgets it: a crash in between leaves a row pointing at nothing for
    a job that never resumes, never a blob that nothing points at.
    """
    checkpoints = repository.finished_jobs_resume_states(session, limit=limit)
    for checkpoint in checkpoints:
        assert checkpoint.storage_key is not None
        delete(checkpoint.storage_key)
        checkpoint.storage_key = None
    return len(checkpoints)


def jobs_to_publish(session: Session, *, republish_after: float) -> list[str]:
    """Jobs a worker should be told about (the reconciler's scan); marks them published."""
    return repository.mark_jobs_to_publish(session, republish_after=republish_after)


def _error(message: str, code: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None}
