"""Every SQL statement that touches jobs, their events and checkpoints.

Tenant reads go through `readable_jobs` (or `_READABLE_JOB` and `_READABLE_JOB_ROW`, its filter built once
for the hot reads).
Status changes go through `transition`, a conditional UPDATE whose WHERE clause holds the state
machine's rules (and, for a worker, that it still holds the lease), so two processes racing cannot
both win.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    String,
    and_,
    bindparam,
    cast,
    delete,
    func,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from loraq.core.errors import NotFound
from loraq.core.repository import Page, paginate
from loraq.jobs.states import ACTIVE, ALLOWED_FROM, TERMINAL, JobStatus, Lease
from loraq.jobs.tables import Checkpoint, Job, JobEvent, JobSample
from loraq.projects.tables import Project


def readable_jobs(project_id: str) -> Select[Job]:
    return select(Job).where(Job.project_id == project_id)


# Built once: a statement built per call costs about as much as the query.
_READABLE_JOB = select(Job).where(Job.project_id == bindparam("project_id"), Job.id == bindparam("job_id"))
# What the polls every client makes read (GET job: the SDK's and the CLI's waits, the dashboard's job page;
# the list: the dashboard's front page): the columns, named by attribute (`metadata_`), with no ORM instance
# to build and fill (docs/benchmarks.md, "GET job").
_JOB_COLUMNS = select(
    *(column.label(name) for name, column in inspect(Job).columns.items() if name != "base_samples")
)
_READABLE_JOB_ROW = _JOB_COLUMNS.where(
    Job.project_id == bindparam("project_id"), Job.id == bindparam("job_id")
)


def get_job(session: Session, *, project_id: str, job_id: str) -> Job:
    job = session.scalars(_READABLE_JOB, {"project_id": project_id, "job_id": job_id}).one_or_none()
    if job is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


def read_job(session: Session, *, project_id: str, job_id: str) -> Row[Any]:
    """A job's row for an answer: what `get_job` reads, as columns by attribute name."""
    # On the session's connection: columns need none of the ORM's execution (0.92x a GET's CPU).
    parameters = {"project_id": project_id, "job_id": job_id}
    row = session.connection().execute(_READABLE_JOB_ROW, parameters).one_or_none()
    if row is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return row


def get_job_for_worker(session: Session, job_id: str) -> Job:
    """A job by id alone: only for a worker that holds its lease (the id came from the queue)."""
    return session.scalars(select(Job).where(Job.id == job_id)).one()


def add_job(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def list_jobs(
    session: Session,
    *,
    project_id: str,
    status: str | None,
    metadata: dict[str, str],
    after: str | None,
    limit: int,
    q: str | None = None,
) -> Page[Row[Any]]:
    """A page of a project's jobs, newest first, as rows of columns named like `read_job`'s."""
    statement = _JOB_COLUMNS.where(Job.project_id == project_id)
    if status is not None:
        statement = statement.where(Job.status == status)
    if q:
        statement = statement.where(_matches(q))
    for key, value in metadata.items():
        statement = statement.where(Job.metadata_[key].as_string() == value)
    return paginate(session, statement, Job, after=after, limit=limit, rows=True)


def _matches(q: str) -> ColumnElement[bool]:
    """Case-insensitive substring search over a job's id, suffix, models and metadata (as JSON text)."""
    needle = q.lower()
    columns = (Job.id, Job.suffix, Job.model, Job.fine_tuned_model, cast(Job.metadata_, String))
    return or_(*(func.lower(column).contains(needle, autoescape=True) for column in columns))


def list_events(
    session: Session, *, project_id: str, job_id: str, after: str | None, limit: int
) -> Page[JobEvent]:
    job = get_job(session, project_id=project_id, job_id=job_id)
    statement = select(JobEvent).where(JobEvent.job_id == job.id)
    return paginate(session, statement, JobEvent, after=after, limit=limit)


def list_checkpoints(
    session: Session, *, project_id: str, job_id: str, after: str | None, limit: int
) -> Page[Checkpoint]:
    job = get_job(session, project_id=project_id, job_id=job_id)
    statement = select(Checkpoint).where(Checkpoint.job_id == job.id)
    return paginate(session, statement, Checkpoint, after=after, limit=limit)


def list_samples(
    session: Session, *, project_id: str, job_id: str, after: str | None, limit: int
) -> Page[JobSample]:
    job = get_job(session, project_id=project_id, job_id=job_id)
    statement = select(JobSample).where(JobSample.job_id == job.id)
    return paginate(session, statement, JobSample, after=after, limit=limit)


def replace_samples(session: Session, job_id: str, step: int, samples: Sequence[JobSample]) -> None:
    """The tuned answers of one step: an evaluation of the same step again replaces the earlier ones."""
    session.execute(
        delete(JobSample)
        .where(JobSample.job_id == job_id, JobSample.step == step)
        .execution_options(synchronize_session=False)
    )
    session.add_all(samples)


def delete_samples_after(session: Session, job_id: str, step: int) -> None:
    """Drop the tuned answers of the steps past `step`: a run resumed from there generates them anew."""
    session.execute(
        delete(JobSample)
        .where(JobSample.job_id == job_id, JobSample.step > step)
        .execution_options(synchronize_session=False)
    )


def newest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The checkpoint a resumed run starts from: the newest that still has its resume state."""
    return session.scalars(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.storage_key.is_not(None))
        .order_by(Checkpoint.step_number.desc())
        .limit(1)
    ).first()


def checkpoints_with_resume_state(session: Session, job_id: str) -> Sequence[Checkpoint]:
    return session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.storage_key.is_not(None))
    ).all()


def checkpoints_with_bundles(session: Session, job_id: str) -> Sequence[Checkpoint]:
    """The job's checkpoints whose adapter is still a downloadable file, newest first."""
    return session.scalars(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.result_file.is_not(None))
        .order_by(Checkpoint.step_number.desc())
    ).all()


def finished_jobs_resume_states(session: Session, *, limit: int) -> Sequence[Checkpoint]:
    """Checkpoints of finished jobs that still keep resume state, which nothing will read again."""
    return session.scalars(
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.status.in_([s.value for s in TERMINAL]), Checkpoint.storage_key.is_not(None))
        .order_by(Checkpoint.seq)
        .limit(limit)
    ).all()


def get_fine_tuned(session: Session, *, project_id: str, name: str) -> Job | None:
    """The project's succeeded job whose fine-tuned model has this name."""
    return session.scalars(
        readable_jobs(project_id).where(Job.fine_tuned_model == name, Job.status == JobStatus.SUCCEEDED.value)
    ).one_or_none()


def list_fine_tuned_models(session: Session, *, project_id: str) -> Sequence[Job]:
    return session.scalars(
        readable_jobs(project_id).where(Job.fine_tuned_model.is_not(None)).order_by(Job.seq.desc())
    ).all()


def active_jobs_using_file(session: Session, *, project_id: str, file_id: str) -> Sequence[Job]:
    return session.scalars(
        readable_jobs(project_id).where(
            (Job.training_file == file_id) | (Job.validation_file == file_id),
            Job.status.in_([s.value for s in ACTIVE]),
        )
    ).all()


def count_queued(session: Session, *, project_id: str) -> int:
    queued = session.scalar(
        select(func.count()).where(Job.project_id == project_id, Job.status == JobStatus.QUEUED.value)
    )
    return int(queued or 0)


def count_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status, across all projects: for operators' metrics, never the API."""
    return {
        status: count
        for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status))
    }


def transition(
    session: Session,
    job_id: str,
    to: JobStatus,
    *,
    lease: Lease | None = None,
    extra_condition: ColumnElement[bool] | None = None,
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


def claimable() -> ColumnElement[bool]:
    """Queued, or running on a lease that expired (its worker died)."""
    return or_(
        Job.status == JobStatus.QUEUED.value,
        and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < time.time()),
    )


def project_of(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.project_id).where(Job.id == job_id))


def under_running_limit(default_running_limit: int) -> ColumnElement[bool]:
    """The job's project runs fewer other jobs than it may."""
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
    return running_elsewhere < project_limit


def renew_lease(session: Session, lease: Lease, *, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer ours (cancelled, or taken over)."""
    result = session.execute(
        update(Job)
        .where(Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status == JobStatus.RUNNING.value)
        .values(lease_expires_at=time.time() + lease_seconds)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def lease_holder(session: Session, job_id: str) -> str | None:
    """Who holds the running job's lease; None when it is not running."""
    return session.scalar(
        select(Job.lease_owner).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
    )


def lock_leased(session: Session, lease: Lease, **values: Any) -> bool:
    """Lock the job's row for the rest of the transaction if `lease` still runs it; True when it does.

    An UPDATE, not a SELECT: it takes Postgres's row lock and SQLite's write lock at once, so a
    cancel or a takeover waits for this transaction, and what it writes commits only if still ours.
    Without values it writes the lease owner back unchanged, which locks all the same.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status == JobStatus.RUNNING.value)
        .values(**(values or {"lease_owner": Job.lease_owner}))
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def add_event(session: Session, event: JobEvent) -> None:
    session.add(event)


def add_checkpoint(session: Session, checkpoint: Checkpoint) -> None:
    session.add(checkpoint)


def delete_metrics_after(session: Session, job_id: str, step: int) -> None:
    """Drop the job's metrics events of the steps past `step`: a run resumed from there logs them anew."""
    session.execute(
        delete(JobEvent)
        .where(
            JobEvent.job_id == job_id, JobEvent.type == "metrics", JobEvent.data["step"].as_integer() > step
        )
        .execution_options(synchronize_session=False)
    )


def mark_jobs_to_publish(session: Session, *, republish_after: float) -> list[str]:
    """Jobs a worker should be told about: queued and not published lately, or running on an expired lease.

    Marks them published now. System-wide (the reconciler serves every project); never exposed
    through the API.
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
