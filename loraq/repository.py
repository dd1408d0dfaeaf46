"""Every read of tenant data, scoped to the caller's project in one place.

Routes and services read through these functions; a query that forgot the project filter
would have to bypass this module to exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from loraq.errors import InvalidRequest, NotFound
from loraq.lifecycle import ACTIVE
from loraq.models import Checkpoint, File, Job, JobEvent

Row = TypeVar("Row", File, Job, JobEvent, Checkpoint)


@dataclass
class Page(Generic[Row]):
    items: Sequence[Row]
    has_more: bool


def readable_files(project_id: str) -> Select[File]:
    return select(File).where(File.project_id == project_id)


def readable_jobs(project_id: str) -> Select[Job]:
    return select(Job).where(Job.project_id == project_id)


def get_file(session: Session, *, project_id: str, file_id: str, param: str = "file_id") -> File:
    file = session.scalars(readable_files(project_id).where(File.id == file_id)).one_or_none()
    if file is None:
        raise NotFound(f"No such File object: {file_id}", param=param)
    return file


def get_job(session: Session, *, project_id: str, job_id: str, for_update: bool = False) -> Job:
    statement = readable_jobs(project_id).where(Job.id == job_id)
    if for_update:
        statement = statement.with_for_update()
    job = session.scalars(statement).one_or_none()
    if job is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


def _paginate(
    session: Session, statement: Select[Any], model: Any, *, after: str | None, limit: int
) -> Page[Any]:
    """Newest first; `after` is the id of the last item of the previous page."""
    if after is not None:
        after_seq = session.scalar(statement.with_only_columns(model.seq).where(model.id == after))
        if after_seq is None:
            raise InvalidRequest(f"after: no such object in this list: {after}", param="after")
        statement = statement.where(model.seq < after_seq)
    rows = session.scalars(statement.order_by(model.seq.desc()).limit(limit + 1)).all()
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def list_files(
    session: Session, *, project_id: str, purpose: str | None, after: str | None, limit: int
) -> Page[File]:
    statement = readable_files(project_id)
    if purpose is not None:
        statement = statement.where(File.purpose == purpose)
    return _paginate(session, statement, File, after=after, limit=limit)


def list_jobs(
    session: Session,
    *,
    project_id: str,
    status: str | None,
    metadata: dict[str, str],
    after: str | None,
    limit: int,
) -> Page[Job]:
    statement = readable_jobs(project_id)
    if status is not None:
        statement = statement.where(Job.status == status)
    for key, value in metadata.items():
        statement = statement.where(Job.metadata_[key].as_string() == value)
    return _paginate(session, statement, Job, after=after, limit=limit)


def list_events(
    session: Session, *, project_id: str, job_id: str, after: str | None, limit: int
) -> Page[JobEvent]:
    job = get_job(session, project_id=project_id, job_id=job_id)
    statement = select(JobEvent).where(JobEvent.job_id == job.id)
    return _paginate(session, statement, JobEvent, after=after, limit=limit)


def list_checkpoints(
    session: Session, *, project_id: str, job_id: str, after: str | None, limit: int
) -> Page[Checkpoint]:
    job = get_job(session, project_id=project_id, job_id=job_id)
    statement = select(Checkpoint).where(Checkpoint.job_id == job.id)
    return _paginate(session, statement, Checkpoint, after=after, limit=limit)


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
