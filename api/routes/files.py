"""/v1/files: upload (validated as it streams), list, read, download, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.bodies import MultipartForm, request_chunks
from api.deps import Cursor, IdempotencyKey, ObjectId, ProjectId, SessionDep, SettingsDep, StoreDep
from api.routing import OneHopRoute
from api.schemas.common import ListPublic, list_of
from api.schemas.files import FileDeleted, FilePublic
from loraq.core.text import ID_PATTERN
from loraq.files import repository, service
from loraq.projects.idempotency import create_once, fingerprint
from loraq.storage.hashing import sha256_of

router = APIRouter(prefix="/v1/files", tags=["files"], route_class=OneHopRoute)


# The body is read by hand (MultipartForm), so the schema FastAPI would infer is given here.
UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["purpose", "file"],
                    "properties": {
                        "purpose": {"type": "string", "enum": [service.DATASET_PURPOSE]},
                        "file": {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                            "description": "The JSONL dataset, validated as it streams in.",
                        },
                    },
                }
            }
        },
    }
}


@router.post("", response_model=FilePublic, openapi_extra=UPLOAD_FORM)
def upload_file(
    request: Request,
    project_id: ProjectId,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Upload a dataset: read once from the socket, through the validator, into one spool file."""
    form = MultipartForm(
        request_chunks(request),
        request.headers.get("content-type"),
        file_field="file",
        text_fields=frozenset({"purpose"}),
    )
    # A purpose sent first (as OpenAI's SDK does) is checked before a byte of the file is read.
    if (purpose := form.fields_before_file().get("purpose")) is not None:
        service.check_purpose(purpose)
    filename = form.filename or ""

    def create() -> tuple[dict[str, Any], str]:
        with service.receive_dataset(form.file_chunks(), settings=settings) as received:
            purpose = form.finish()["purpose"]
            created = service.store_dataset(
                session,
                project_id=project_id,
                filename=filename,
                purpose=purpose,
                received=received,
                store=store,
                settings=settings,
            )
        return FilePublic.model_validate(created).model_dump(), fingerprint(filename, purpose, created.sha256)

    def request_fingerprint() -> str:
        sha256 = sha256_of(form.file_chunks())
        return fingerprint(filename, form.finish()["purpose"], sha256)

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
    purpose: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    after: Cursor = None,
    # OpenAI's range, but a page of 20 by default: a dashboard's list need not carry every checkpoint's file.
    limit: Annotated[int, Query(ge=1, le=10000)] = 20,
) -> ListPublic[FilePublic]:
    page = repository.list_files(session, project_id=project_id, purpose=purpose, after=after, limit=limit)
    return list_of(page, FilePublic.model_validate)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: ObjectId, project_id: ProjectId, session: SessionDep) -> FilePublic:
    return FilePublic.model_validate(repository.get_file(session, project_id=project_id, file_id=file_id))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_file(
    file_id: ObjectId, project_id: ProjectId, session: SessionDep, store: StoreDep
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
def delete_file(
    file_id: ObjectId, project_id: ProjectId, session: SessionDep, store: StoreDep
) -> FileDeleted:
    deleted = service.delete_file(session, project_id=project_id, file_id=file_id, store=store)
    return FileDeleted(id=deleted.id)


def _ascii(name: str) -> str:
    # A header value must not carry quotes, newlines or non-ASCII from a user's filename.
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
