"""Projects (tenants), their API keys and their limits; managed with an admin key."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from loraq.errors import NotFound, TooManyRequests
from loraq.keys import create_api_key
from loraq.lifecycle import JobStatus
from loraq.models import ApiKey, File, Job, Project
from loraq.settings import Settings


def create_project(
    session: Session,
    *,
    name: str,
    max_running_jobs: int | None = None,
    max_queued_jobs: int | None = None,
    max_storage_bytes: int | None = None,
) -> Project:
    project = Project(
        name=name,
        max_running_jobs=max_running_jobs,
        max_queued_jobs=max_queued_jobs,
        max_storage_bytes=max_storage_bytes,
    )
    session.add(project)
    session.flush()
    return project


def list_projects(session: Session) -> Sequence[Project]:
    return session.scalars(select(Project).order_by(Project.seq)).all()


def get_project(session: Session, project_id: str) -> Project:
    project = session.scalars(select(Project).where(Project.id == project_id)).one_or_none()
    if project is None:
        raise NotFound(f"No such project: {project_id}", param="project_id")
    return project


def issue_key(session: Session, *, project_id: str) -> tuple[ApiKey, str]:
    get_project(session, project_id)
    return create_api_key(session, project_id=project_id)


def list_keys(session: Session, *, project_id: str) -> Sequence[ApiKey]:
    get_project(session, project_id)
    return session.scalars(select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.seq)).all()


def revoke_key(session: Session, *, project_id: str, key_id: str) -> ApiKey:
    key = session.scalars(
        select(ApiKey).where(ApiKey.project_id == project_id, ApiKey.id == key_id)
    ).one_or_none()
    if key is None:
        raise NotFound(f"No such API key: {key_id}", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = int(time.time())
    return key


def check_can_queue(session: Session, *, project_id: str, settings: Settings) -> None:
    """429 when the project already has as many queued jobs as it may."""
    project = get_project(session, project_id)
    limit = project.max_queued_jobs or settings.default_max_queued_jobs
    queued = session.scalar(
        select(func.count()).where(Job.project_id == project_id, Job.status == JobStatus.QUEUED.value)
    )
    if (queued or 0) >= limit:
        raise TooManyRequests(
            f"this project already has {queued} queued jobs, its limit; wait for some to start or cancel them"
        )


def check_storage(session: Session, *, project_id: str, adding_bytes: int, settings: Settings) -> None:
    """429 when storing `adding_bytes` more would take the project past its storage limit."""
    project = get_project(session, project_id)
    limit = project.max_storage_bytes or settings.default_max_storage_bytes
    used = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.project_id == project_id))
    if (used or 0) + adding_bytes > limit:
        raise TooManyRequests(
            f"storing {adding_bytes} more bytes would exceed this project's storage limit of {limit} bytes "
            f"({used} used); delete files you no longer need"
        )
