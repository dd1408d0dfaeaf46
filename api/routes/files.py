"""/v1/files: upload (validated as it streams), list, read, download, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from api.deps import IdempotencyKey, ProjectId, SessionDep, SettingsDep, StoreDep
from api.schemas import FileDeleted, FilePublic, ListPublic, list_of
from loraq import files, repository
from loraq.idempotency import create_once, fingerprint

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FilePublic)
def upload_file(
    file: UploadFile,
    purpose: Annotated[str, Form()],
    project_id: ProjectId,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    filename = file.filename or "upload.jsonl"

    def create() -> tuple[dict[str, Any], str]:
        created = files.create_dataset(
            session,
            project_id=project_id,
            filename=filename,
            purpose=purpose,
            chunks=files.read_chunks(file.file),
            store=store,
            settings=settings,
        )
        return FilePublic.of(created).model_dump(), fingerprint(filename, purpose, created.sha256)

    def request_fingerprint() -> str:
        return fingerprint(filename, purpose, files.sha256_of(files.read_chunks(file.file)))

    return create_once(
        session,
        project_id=project_id,
        key=idempotency_key,
        endpoint="files.create",
        request_fingerprint=request_fingerprint,
        create=create,
    )


@router.get("", response_model=ListPublic[FilePublic])
def list_files(
    project_id: ProjectId,
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
) -> ListPublic[FilePublic]:
    page = repository.list_files(session, project_id=project_id, purpose=purpose, after=after, limit=limit)
    return list_of(page, FilePublic.of)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: str, project_id: ProjectId, session: SessionDep) -> FilePublic:
    return FilePublic.of(repository.get_file(session, project_id=project_id, file_id=file_id))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_file(
    file_id: str, project_id: ProjectId, session: SessionDep, store: StoreDep
) -> StreamingResponse:
    file = repository.get_file(session, project_id=project_id, file_id=file_id)
    return StreamingResponse(
        store.iter_bytes(file.storage_key),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(file.bytes),
            "Content-Disposition": f'attachment; filename="{file.id}-{_ascii(file.filename)}"',
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, project_id: ProjectId, session: SessionDep, store: StoreDep) -> FileDeleted:
    deleted = files.delete_file(session, project_id=project_id, file_id=file_id, store=store)
    return FileDeleted(id=deleted.id)


def _ascii(name: str) -> str:
    # A header value must not carry quotes, newlines or non-ASCII from a user's filename.
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
