"""Projects (tenants), their API keys and their limits; managed with an admin key."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from loraq.core.errors import TooManyRequests
from loraq.core.settings import Settings
from loraq.jobs import repository as jobs_repository
from loraq.projects import keys, repository
from loraq.projects.keys import create_api_key
from loraq.projects.tables import ApiKey, Project


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
    repository.add(session, project)
    return project


def list_projects(session: Session) -> Sequence[Project]:
    return repository.list_projects(session)


def get_project(session: Session, project_id: str) -> Project:
    return repository.get_project(session, project_id)


def issue_key(session: Session, *, project_id: str) -> tuple[ApiKey, str]:
    get_project(session, project_id)
    return create_api_key(session, project_id=project_id)


def list_keys(session: Session, *, project_id: str) -> Sequence[ApiKey]:
    get_project(session, project_id)
    return repository.list_keys(session, project_id=project_id)


def revoke_key(session: Session, *, project_id: str, key_id: str) -> ApiKey:
    key = repository.get_key(session, project_id=project_id, key_id=key_id)
    keys.revoke(session, key)
    return key


def check_can_queue(session: Session, *, project_id: str, settings: Settings) -> None:
    """429 when the project already has as many queued jobs as it may (checked under the project's lock)."""
    repository.lock(session, project_id)
    project = get_project(session, project_id)
    limit = project.max_queued_jobs or settings.default_max_queued_jobs
    queued = jobs_repository.count_queued(session, project_id=project_id)
    if queued >= limit:
        raise TooManyRequests(
            f"this project already has {queued} queued jobs, its limit; wait for some to start or cancel them"
        )


def check_storage(session: Session, *, project_id: str, adding_bytes: int, settings: Settings) -> None:
    """429 when storing `adding_bytes` more would take the project past its storage limit.

    Under the project's lock, held until the caller's commit: two uploads cannot both take the last room.
    """
    repository.lock(session, project_id)
    project = get_project(session, project_id)
    limit = project.max_storage_bytes or settings.default_max_storage_bytes
    used = repository.stored_bytes(session, project_id=project_id)
    if used + adding_bytes > limit:
        raise TooManyRequests(
            f"storing {adding_bytes} more bytes would exceed this project's storage limit of {limit} bytes "
            f"({used} used); delete files you no longer need"
        )
