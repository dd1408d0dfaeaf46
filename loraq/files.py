"""Files: datasets validated while they stream into the store, and result files from workers."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import event
from sqlalchemy.orm import Session

from loraq import repository
from loraq.datasets import DatasetError, DatasetLimits, DatasetValidator
from loraq.errors import Conflict, InvalidRequest, PayloadTooLarge
from loraq.models import File
from loraq.projects import check_storage
from loraq.settings import Settings
from loraq.storage import ArtifactStore, new_storage_key

DATASET_PURPOSE = "fine-tune"
RESULTS_PURPOSE = "fine-tune-results"


def create_dataset(
    session: Session,
    *,
    project_id: str,
    filename: str,
    purpose: str,
    chunks: Iterable[bytes],
    store: ArtifactStore,
    settings: Settings,
) -> File:
    """Validate an upload line by line as it streams to a temp file, then store it; nothing on error."""
    if purpose != DATASET_PURPOSE:
        raise InvalidRequest(f"purpose must be '{DATASET_PURPOSE}'", param="purpose")
    limits = DatasetLimits(max_line_bytes=settings.max_line_bytes, max_bytes=settings.max_upload_bytes)
    validator = DatasetValidator(limits)
    with tempfile.NamedTemporaryFile(prefix="loraq-upload-", suffix=".jsonl") as spool:
        received = 0
        try:
            for chunk in chunks:
                received += len(chunk)
                if received > settings.max_upload_bytes:
                    raise PayloadTooLarge(
                        f"file is larger than the limit of {settings.max_upload_bytes} bytes", param="file"
                    )
                validator.feed(chunk)
                spool.write(chunk)
            summary = validator.finish()
        except DatasetError as error:
            raise InvalidRequest(str(error), param="file", code="invalid_file") from error
        spool.flush()
        check_storage(session, project_id=project_id, adding_bytes=summary.bytes, settings=settings)
        key = new_storage_key("datasets", ".jsonl")
        store.put_file(key, Path(spool.name))
    _delete_blob_on_rollback(session, store, key)
    file = File(
        project_id=project_id,
        filename=_display_name(filename),
        purpose=purpose,
        bytes=summary.bytes,
        sha256=summary.sha256,
        format=summary.format,
        examples=summary.examples,
        storage_key=key,
    )
    session.add(file)
    session.flush()
    return file


def create_result_file(
    session: Session, *, project_id: str, filename: str, source: Path, store: ArtifactStore
) -> File:
    """Store a worker's output (an adapter bundle) as a file the project can download."""
    key = new_storage_key("results", ".tar.gz")
    store.put_file(key, source)
    _delete_blob_on_rollback(session, store, key)
    file = File(
        project_id=project_id,
        filename=filename,
        purpose=RESULTS_PURPOSE,
        bytes=source.stat().st_size,
        sha256=sha256_file(source),
        storage_key=key,
    )
    session.add(file)
    session.flush()
    return file


def delete_file(session: Session, *, project_id: str, file_id: str, store: ArtifactStore) -> File:
    file = repository.get_file(session, project_id=project_id, file_id=file_id)
    if repository.active_jobs_using_file(session, project_id=project_id, file_id=file_id):
        raise Conflict(f"file {file_id} is used by a job that has not finished", param="file_id")
    session.delete(file)
    session.flush()
    # The blob goes only once the row's deletion is committed.
    event.listen(session, "after_commit", lambda _s: store.delete(file.storage_key), once=True)
    return file


_UNCOMMITTED_BLOBS = "loraq_uncommitted_blobs"


def _delete_blob_on_rollback(session: Session, store: ArtifactStore, key: str) -> None:
    """A blob whose row never commits is deleted, so a failed request leaves nothing half-stored."""
    pending: list[tuple[ArtifactStore, str]] = session.info.setdefault(_UNCOMMITTED_BLOBS, [])
    if not pending:
        event.listen(session, "after_commit", _forget_blobs, once=True)
        event.listen(session, "after_rollback", _delete_blobs, once=True)
    pending.append((store, key))


def _forget_blobs(session: Session) -> None:
    session.info.pop(_UNCOMMITTED_BLOBS, None)


def _delete_blobs(session: Session) -> None:
    for store, key in session.info.pop(_UNCOMMITTED_BLOBS, []):
        store.delete(key)


def _display_name(filename: str) -> str:
    # Only shown back to the user; storage never sees it.
    name = Path(filename or "upload.jsonl").name
    return name[:255] or "upload.jsonl"


def read_chunks(handle: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """A binary file in chunks, so no file is ever held whole in memory."""
    while chunk := handle.read(size):
        yield chunk


def sha256_of(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return sha256_of(read_chunks(handle))
