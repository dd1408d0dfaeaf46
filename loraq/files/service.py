"""Files: datasets validated while they stream into the store, and result files from workers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session

from loraq.core.db import after_commit, after_rollback
from loraq.core.errors import Conflict, InvalidRequest, PayloadTooLarge
from loraq.core.settings import Settings
from loraq.core.text import has_control_characters
from loraq.files import repository
from loraq.files.tables import File
from loraq.files.validation import DatasetError, DatasetLimits, DatasetSummary, DatasetValidator
from loraq.jobs import repository as jobs_repository
from loraq.projects.service import check_storage
from loraq.storage.hashing import sha256_file
from loraq.storage.scratch import scratch_file
from loraq.storage.stores import ArtifactStore, new_storage_key

DATASET_PURPOSE = "fine-tune"
RESULTS_PURPOSE = "fine-tune-results"


@dataclass(frozen=True)
class ReceivedDataset:
    """An upload that passed validation, spooled to `path` until it is stored."""

    path: Path
    summary: DatasetSummary


def check_purpose(purpose: str) -> None:
    if purpose != DATASET_PURPOSE:
        raise InvalidRequest(f"purpose must be '{DATASET_PURPOSE}'", param="purpose")


@contextmanager
def receive_dataset(chunks: Iterable[bytes], *, settings: Settings) -> Iterator[ReceivedDataset]:
    """Validate an upload line by line as it streams into one spool file, which lasts as long as the block."""
    limits = DatasetLimits(max_line_bytes=settings.max_line_bytes, max_bytes=settings.max_upload_bytes)
    validator = DatasetValidator(limits)
    # Under LORAQ_HOME, named for this process: an API killed mid-upload leaves nothing in /tmp, and
    # the next start removes what it left (loraq.storage.scratch).
    with scratch_file(settings.scratch_dir, "upload", ".jsonl") as spool:
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
        yield ReceivedDataset(Path(spool.name), summary)


def store_dataset(
    session: Session,
    *,
    project_id: str,
    filename: str,
    purpose: str,
    received: ReceivedDataset,
    store: ArtifactStore,
    settings: Settings,
) -> File:
    """Store a received dataset as the project's file; nothing is left in the store on error."""
    check_purpose(purpose)
    display_name = _display_name(filename)
    summary = received.summary
    check_storage(session, project_id=project_id, adding_bytes=summary.bytes, settings=settings)
    key = new_storage_key("datasets", ".jsonl")
    # The spool is moved into a local store, not copied: an upload is written once.
    store.put_file(key, received.path, move=True)
    # A blob whose row never commits is deleted, so a failed request leaves nothing half-stored.
    after_rollback(session, partial(store.delete, key))
    file = File(
        project_id=project_id,
        filename=display_name,
        purpose=purpose,
        bytes=summary.bytes,
        sha256=summary.sha256,
        format=summary.format,
        examples=summary.examples,
        storage_key=key,
    )
    return repository.add(session, file)


def create_result_file(
    session: Session,
    *,
    project_id: str,
    filename: str,
    source: Path,
    store: ArtifactStore,
    settings: Settings,
) -> File:
    """Store a worker's output (an adapter bundle, moved out of its scratch space) as a downloadable file.

    It counts against the project's storage like an upload: past the limit, a 429 the job fails with.
    """
    check_storage(session, project_id=project_id, adding_bytes=source.stat().st_size, settings=settings)
    key = new_storage_key("results", ".tar.gz")
    file = File(
        project_id=project_id,
        filename=filename,
        purpose=RESULTS_PURPOSE,
        bytes=source.stat().st_size,
        sha256=sha256_file(source),
        storage_key=key,
    )
    store.put_file(key, source, move=True)
    after_rollback(session, partial(store.delete, key))
    return repository.add(session, file)


def delete_file(session: Session, *, project_id: str, file_id: str, store: ArtifactStore) -> File:
    file = repository.get_file(session, project_id=project_id, file_id=file_id)
    if jobs_repository.active_jobs_using_file(session, project_id=project_id, file_id=file_id):
        raise Conflict(f"file {file_id} is used by a job that has not finished", param="file_id")
    repository.delete(session, file)
    # The blob goes only once the row's deletion is committed.
    after_commit(session, partial(store.delete, file.storage_key))
    return file


def _display_name(filename: str) -> str:
    # Only shown back to the user; storage never sees it.
    if has_control_characters(filename):
        raise InvalidRequest(
            "file: the filename must not contain control characters such as NUL", param="file"
        )
    name = Path(filename or "upload.jsonl").name
    return name[:255] or "upload.jsonl"
