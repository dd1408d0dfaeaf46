"""/v1/fine_tuning/jobs: create, list, read, cancel, events, checkpoints."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import IdempotencyKey, ProjectId, SessionDep, SettingsDep, StoreDep
from api.schemas import CheckpointPublic, EventPublic, JobPublic, ListPublic, list_of
from loraq import jobs, repository
from loraq.errors import InvalidRequest
from loraq.idempotency import create_once, fingerprint
from loraq.spec import JobCreate

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=JobPublic)
def create_job(
    body: JobCreate,
    project_id: ProjectId,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    request_fingerprint = fingerprint(body.model_dump(mode="json"))

    def create() -> tuple[dict[str, Any], str]:
        job = jobs.create_job(session, project_id=project_id, request=body, settings=settings)
        return JobPublic.of(job).model_dump(mode="json"), request_fingerprint

    return create_once(
        session,
        project_id=project_id,
        key=idempotency_key,
        endpoint="jobs.create",
        request_fingerprint=lambda: request_fingerprint,
        create=create,
    )


@router.post("/estimate")
def estimate_job(
    body: JobCreate, project_id: ProjectId, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> dict[str, Any]:
    """Examples, tokens, truncation, length percentiles, steps and a memory estimate, without queueing."""
    return jobs.estimate_job(session, project_id=project_id, request=body, settings=settings, store=store)


@router.get("", response_model=ListPublic[JobPublic])
def list_jobs(
    project_id: ProjectId,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
    status: str | None = None,
    metadata: Annotated[str | None, Query(description='JSON object, e.g. {"team":"search"}')] = None,
) -> ListPublic[JobPublic]:
    page = repository.list_jobs(
        session,
        project_id=project_id,
        status=status,
        metadata=_metadata_filter(metadata),
        after=after,
        limit=limit,
    )
    return list_of(page, JobPublic.of)


@router.get("/{fine_tuning_job_id}", response_model=JobPublic)
def get_job(fine_tuning_job_id: str, project_id: ProjectId, session: SessionDep) -> JobPublic:
    return JobPublic.of(repository.get_job(session, project_id=project_id, job_id=fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=JobPublic)
def cancel_job(fine_tuning_job_id: str, project_id: ProjectId, session: SessionDep) -> JobPublic:
    return JobPublic.of(jobs.cancel_job(session, project_id=project_id, job_id=fine_tuning_job_id))


@router.get("/{fine_tuning_job_id}/events", response_model=ListPublic[EventPublic])
def list_events(
    fine_tuning_job_id: str,
    project_id: ProjectId,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
) -> ListPublic[EventPublic]:
    page = repository.list_events(
        session, project_id=project_id, job_id=fine_tuning_job_id, after=after, limit=limit
    )
    return list_of(page, EventPublic.of)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=ListPublic[CheckpointPublic])
def list_checkpoints(
    fine_tuning_job_id: str,
    project_id: ProjectId,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 10,
) -> ListPublic[CheckpointPublic]:
    page = repository.list_checkpoints(
        session, project_id=project_id, job_id=fine_tuning_job_id, after=after, limit=limit
    )
    return list_of(page, CheckpointPublic.of)


def _metadata_filter(raw: str | None) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"metadata must be a JSON object: {error}", param="metadata") from error
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise InvalidRequest("metadata must be a JSON object of strings", param="metadata")
    return parsed
