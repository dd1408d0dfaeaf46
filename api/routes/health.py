"""Liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from api.errors import error_response
from loraq import lifecycle
from loraq.db import get_engine, session_scope
from loraq.lifecycle import JobStatus
from loraq.queue import get_celery

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is down"}})
def readyz() -> Response:
    problems = []
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        problems.append(f"database: {type(error).__name__}")
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as error:
        problems.append(f"broker: {type(error).__name__}")
    if problems:
        return error_response(
            503, "not ready: " + "; ".join(problems), type="server_error", code="service_unavailable"
        )
    return Response('{"status":"ready"}', media_type="application/json")


JOBS_BY_STATUS = Gauge(
    "loraq_jobs", "Fine-tuning jobs in the database, by status (all projects).", ["status"]
)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics() -> Response:
    try:
        with session_scope() as session:
            counts = lifecycle.count_by_status(session)
        for status in JobStatus:
            JOBS_BY_STATUS.labels(status=status.value).set(counts.get(status.value, 0))
    except OperationalError:
        pass  # the database is down: /readyz says so, and the process metrics are still worth a scrape
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
