"""Liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.errors import error_response
from loraq.db import get_engine
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


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
