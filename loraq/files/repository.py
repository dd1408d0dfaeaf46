"""Every SQL statement that touches files; tenant reads go through `readable_files`."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from loraq.core.errors import NotFound
from loraq.core.repository import Page, paginate
from loraq.files.tables import File


def readable_files(project_id: str) -> Select[File]:
    return select(File).where(File.project_id == project_id)


def get_file(session: Session, *, project_id: str, file_id: str, param: str = "file_id") -> File:
    file = session.scalars(readable_files(project_id).where(File.id == file_id)).one_or_none()
    if file is None:
        raise NotFound(f"No such File object: {file_id}", param=param)
    return file


def list_files(
    session: Session, *, project_id: str, purpose: str | None, after: str | None, limit: int
) -> Page[File]:
    statement = readable_files(project_id)
    if purpose is not None:
        statement = statement.where(File.purpose == purpose)
    return paginate(session, statement, File, after=after, limit=limit)


def add(session: Session, file: File) -> File:
    session.add(file)
    session.flush()
    return file


def delete_by_ids(session: Session, file_ids: list[str]) -> list[str]:
    """Delete these files' rows; their storage keys, for the caller to delete once that commits."""
    files = session.scalars(select(File).where(File.id.in_(file_ids))).all()
    for file in files:
        session.delete(file)
    session.flush()
    return [file.storage_key for file in files]


def delete(session: Session, file: File) -> None:
    session.delete(file)
    session.flush()
