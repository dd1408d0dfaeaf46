"""Liveness, readiness (database, broker, a base model and a live worker) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy.exc import OperationalError

from api.deps import TAKES_API_KEY, AdminKey, SettingsDep
from api.errors import error_response
from api.routing import OneHopRoute
from api.schemas.common import errors_as_json
from loraq.base_models.catalog import list_base_models
from loraq.core.broker import get_celery
from loraq.core.db import session_scope
from loraq.jobs import repository as jobs_repository
from loraq.jobs.states import JobStatus
from loraq.workers import service as workers_service

router = APIRouter(tags=["health"], route_class=OneHopRoute)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is down, or nothing can run jobs"}})
def readyz(settings: SettingsDep) -> Response:
    """Ready when the database and broker answer, a base model is offered and a worker is alive."""
    problems = []
    live_workers = 0
    try:
        with session_scope() as session:
            live_workers = len(workers_service.live_workers(session, settings=settings))
    except Exception as error:
        problems.append(f"database: {type(error).__name__}")
    else:
        if not live_workers:
            problems.append("no live worker: jobs wait in the queue until one starts")
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as error:
        problems.append(f"broker: {type(error).__name__}")
    if not list_base_models(settings):
        problems.append("no base model available")
    if problems:
        return error_response(
            503, "not ready: " + "; ".join(problems), type="server_error", code="service_unavailable"
        )
    return JSONResponse({"status": "ready", "live_workers": live_workers})


JOBS_BY_STATUS = Gauge(
    "loraq_jobs", "Fine-tuning jobs in the database, by status (all projects).", ["status"]
)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors_as_json()},
    openapi_extra=TAKES_API_KEY,
)
def metrics(_admin: AdminKey) -> Response:
    """Prometheus text; its job counts span every project, so it takes an admin key (Prometheus sends it
    with `authorization: {credentials_file: ...}`)."""
    try:
        with session_scope() as session:
            counts = jobs_repository.count_by_status(session)
        for status in JobStatus:
            JOBS_BY_STATUS.labels(status=status.value).set(counts.get(status.value, 0))
    except OperationalError:
        pass  # the database is down: /readyz says so, and the process metrics are still worth a scrape
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
