"""Every SQL statement that touches projects, API keys and idempotency records."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from loraq.core.errors import NotFound
from loraq.files.tables import File
from loraq.jobs.tables import Checkpoint, Job
from loraq.projects.tables import ApiKey, IdempotencyRecord, Project


def add(session: Session, row: Project | ApiKey) -> None:
    session.add(row)
    session.flush()


def list_projects(session: Session) -> Sequence[Project]:
    return session.scalars(select(Project).order_by(Project.seq)).all()


def get_project(session: Session, project_id: str, *, for_update: bool = False) -> Project:
    statement = select(Project).where(Project.id == project_id)
    if for_update:
        statement = statement.with_for_update()
    project = session.scalars(statement).one_or_none()
    if project is None:
        raise NotFound(f"No such project: {project_id}", param="project_id")
    return project


def lock(session: Session, project_id: str) -> None:
    """Hold the project's lock until the transaction ends: its limits are checked and used under it.

    A no-op UPDATE, because it locks on both databases: the row on Postgres, the whole database for
    writes on SQLite (whose driver opens a transaction only at the first write, and whose SELECT ...
    FOR UPDATE locks nothing).
    """
    session.execute(update(Project).where(Project.id == project_id).values(name=Project.name))


def stored_bytes(session: Session, *, project_id: str) -> int:
    """What the project holds in the store: its files, and the resume state its jobs still keep."""
    files = select(func.coalesce(func.sum(File.bytes), 0)).where(File.project_id == project_id)
    resume_states = (
        select(func.coalesce(func.sum(Checkpoint.resume_bytes), 0))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.project_id == project_id, Checkpoint.storage_key.is_not(None))
    )
    return int(session.scalar(files) or 0) + int(session.scalar(resume_states) or 0)


def find_project_by_name(session: Session, name: str) -> Project | None:
    return session.scalars(select(Project).where(Project.name == name).order_by(Project.seq)).first()


def list_keys(session: Session, *, project_id: str) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.seq)).all()


def get_key(session: Session, *, project_id: str, key_id: str) -> ApiKey:
    key = session.scalars(
        select(ApiKey).where(ApiKey.project_id == project_id, ApiKey.id == key_id)
    ).one_or_none()
    if key is None:
        raise NotFound(f"No such API key: {key_id}", param="key_id")
    return key


# Every request runs this: built once, so SQLAlchemy neither rebuilds it nor recomputes its cache key.
_LIVE_KEY_BY_HASH = select(ApiKey).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def live_key_by_hash(session: Session, key_hash: str) -> ApiKey | None:
    return session.scalars(_LIVE_KEY_BY_HASH, {"key_hash": key_hash}).one_or_none()


def idempotency_record(session: Session, *, project_id: str, key: str) -> IdempotencyRecord | None:
    return session.scalars(
        select(IdempotencyRecord).where(
            IdempotencyRecord.project_id == project_id, IdempotencyRecord.key == key
        )
    ).one_or_none()


def add_idempotency_record(session: Session, record: IdempotencyRecord) -> None:
    """Insert in a savepoint, so that losing a race (IntegrityError) leaves the transaction usable."""
    with session.begin_nested():
        session.add(record)
