"""/v1/fine_tuning/jobs: create, list, read, cancel, events, checkpoints, samples."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import Row
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.bodies import JSONBodyRoute, parse_json
from api.deps import (
    Cursor,
    IdempotencyKey,
    ObjectId,
    ProjectId,
    SessionDep,
    SettingsDep,
    StoreDep,
    read_session,
)
from api.schemas.common import ListPublic, list_of
from api.schemas.jobs import CheckpointPublic, EventPublic, JobPublic, SamplePublic
from loraq.core.errors import InvalidRequest
from loraq.core.settings import get_settings
from loraq.jobs import repository, service
from loraq.jobs.spec import JobCreate, Metadata
from loraq.jobs.states import JobStatus
from loraq.projects.idempotency import create_once, fingerprint

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], route_class=JSONBodyRoute)

Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=JobPublic)
def create_job(
    body: JobCreate,
    project_id: ProjectId,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Create and queue a job. A retry with the same Idempotency-Key and body makes no second job: it
    answers the first one as it is now (a job is a live object; its creation-time snapshot is stale)."""
    request_fingerprint = fingerprint(body.model_dump(mode="json"))

    def create() -> tuple[dict[str, Any], str]:
        job = service.create_job(session, project_id=project_id, request=body, settings=settings, store=store)
        return JobPublic.model_validate(job).model_dump(mode="json"), request_fingerprint

    answer = create_once(
        session,
        project_id=project_id,
        key=idempotency_key,
        endpoint="jobs.create",
        request_fingerprint=lambda: request_fingerprint,
        create=create,
    )
    return JobPublic.model_validate(repository.get_job(session, project_id=project_id, job_id=answer["id"]))


@router.post("/estimate")
def estimate_job(
    body: JobCreate, project_id: ProjectId, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> dict[str, Any]:
    """Examples, tokens, truncation, length percentiles, steps and a memory estimate, without queueing."""
    return service.estimate_job(session, project_id=project_id, request=body, settings=settings, store=store)


@router.get("", response_model=ListPublic[JobPublic])
async def list_jobs(
    project_id: ProjectId,
    request: Request,
    after: Cursor = None,
    limit: Limit = 20,
    status: JobStatus | None = None,
    metadata: Annotated[str | None, Query(description='JSON object, e.g. {"team":"search"}')] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Search: part of the id, suffix, model or a metadata value."),
    ] = None,
) -> Response:
    # The dashboard's front page polls it: the short way, as GET job below.
    filters = {
        "status": status,
        "metadata": _metadata_filter(metadata),
        "after": after,
        "limit": limit,
        "q": q.strip() if q else None,
    }
    return await run_in_threadpool(_jobs_answer, read_session(request), project_id, filters)


def _jobs_answer(session: Session, project_id: str, filters: dict[str, Any]) -> Response:
    with session:
        page = repository.list_jobs(session, project_id=project_id, **filters)
        details = service.status_details(session, page.items, settings=get_settings())
    return _json(list_of(page, lambda job: _public(job, details)))


@router.get("/{fine_tuning_job_id}", response_model=JobPublic)
async def get_job(fine_tuning_job_id: ObjectId, project_id: ProjectId, request: Request) -> Response:
    # The one URL every client polls (the SDK's and the CLI's waits, the dashboard's job page), so it takes
    # the short way through FastAPI: its session is not a dependency, which the event loop would enter and
    # leave, and its answer is read, checked and written as JSON in one trip to a thread (docs/benchmarks.md).
    return await run_in_threadpool(_job_answer, read_session(request), project_id, fine_tuning_job_id)


def _job_answer(session: Session, project_id: str, job_id: str) -> Response:
    with session:
        job = repository.read_job(session, project_id=project_id, job_id=job_id)
        details = service.status_details(session, [job], settings=get_settings())
    return _json(_public(job, details))


def _public(job: Row[Any], status_details: dict[str, str]) -> JobPublic:
    return JobPublic.model_validate({**job._mapping, "status_details": status_details.get(job.id)})


def _json(answer: BaseModel) -> Response:
    # Built as the response model: FastAPI passes a returned Response on as it is.
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post("/{fine_tuning_job_id}/cancel", response_model=JobPublic)
def cancel_job(fine_tuning_job_id: ObjectId, project_id: ProjectId, session: SessionDep) -> JobPublic:
    return JobPublic.model_validate(
        service.cancel_job(session, project_id=project_id, job_id=fine_tuning_job_id)
    )


@router.get("/{fine_tuning_job_id}/events", response_model=ListPublic[EventPublic])
def list_events(
    fine_tuning_job_id: ObjectId,
    project_id: ProjectId,
    session: SessionDep,
    after: Cursor = None,
    limit: Limit = 20,
) -> ListPublic[EventPublic]:
    page = repository.list_events(
        session, project_id=project_id, job_id=fine_tuning_job_id, after=after, limit=limit
    )
    return list_of(page, EventPublic.model_validate)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=ListPublic[CheckpointPublic])
def list_checkpoints(
    fine_tuning_job_id: ObjectId,
    project_id: ProjectId,
    session: SessionDep,
    after: Cursor = None,
    limit: Limit = 10,
) -> ListPublic[CheckpointPublic]:
    page = repository.list_checkpoints(
        session, project_id=project_id, job_id=fine_tuning_job_id, after=after, limit=limit
    )
    return list_of(page, CheckpointPublic.model_validate)


@router.get("/{fine_tuning_job_id}/samples", response_model=ListPublic[SamplePublic])
def list_samples(
    fine_tuning_job_id: ObjectId,
    project_id: ProjectId,
    session: SessionDep,
    after: Cursor = None,
    limit: Limit = 20,
) -> ListPublic[SamplePublic]:
    """The base model's and the tuned adapter's answers to the job's samples, the latest step first."""
    page = repository.list_samples(
        session, project_id=project_id, job_id=fine_tuning_job_id, after=after, limit=limit
    )
    return list_of(page, SamplePublic.model_validate)


_METADATA = TypeAdapter(Metadata)


def _metadata_filter(raw: str | None) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        return _METADATA.validate_python(parse_json(raw))
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"metadata must be a JSON object: {error}", param="metadata") from error
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(piece) for piece in problem["loc"])
        raise InvalidRequest(
            f"metadata must be a JSON object of strings: {where + ': ' if where else ''}{problem['msg']}",
            param="metadata",
        ) from error
