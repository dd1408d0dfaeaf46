"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from api.admission import Admission
from api.deps import API_KEY_SCHEME, TAKES_API_KEY
from api.errors import install_error_handlers
from api.limits import AuthenticateFirst, BodyLimitMiddleware
from api.page_policy import PagesLoadFromHere
from api.routes import chat, files, health, jobs, models, projects, webhooks, workers
from api.schemas.common import ERROR_STATUSES, ErrorResponse
from loraq.core.settings import get_settings
from loraq.jobs.estimate_pool import shutdown_estimator

STATIC_DIR = Path(__file__).parent / "static"


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # Admission's requests run on these threads, beside the ones that hold no slot (uploads, estimates).
    anyio.to_thread.current_default_thread_limiter().total_tokens = get_settings().api_threads
    # What imports and the app made lives as long as the process: out of the collector's way, so that a
    # full collection no longer walks it, pausing every request in flight (p99 at 16 clients halved,
    # docs/benchmarks.md). Back in its care at shutdown, for a process that goes on (tests).
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        shutdown_estimator()


def document_api_keys(app: FastAPI) -> None:
    """The API key as OpenAPI's bearer scheme, on every /v1 operation (AuthenticateFirst checks each one's):
    one Authorize box in /docs, and what SDK generators read, where a header parameter per route would be
    extracted and validated on every request."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # made once and kept, by FastAPI
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        if not schemes:
            schemes.update(API_KEY_SCHEME)
            for path, operations in schema["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation.update(TAKES_API_KEY)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app() -> FastAPI:
    # FastAPIOffline: /docs (Swagger UI) and /redoc load their scripts from the installed package,
    # so they work on a machine with no internet access.
    app = FastAPIOffline(
        title="loraq",
        version="0.1.0",
        description="LoRA/QLoRA fine-tuning as a job queue, shaped like OpenAI's fine-tuning API.",
        responses={status: {"model": ErrorResponse} for status in ERROR_STATUSES},
        lifespan=lifespan,
    )
    settings = get_settings()
    # Multipart framing adds a little to the file itself, whose own limit the upload checks.
    app.add_middleware(
        BodyLimitMiddleware,
        upload_limit=settings.max_upload_bytes + (1 << 20),
        json_limit=settings.max_json_body_bytes,
        upload_routes=frozenset({("POST", "/v1/files")}),
    )
    # Added late, so it runs early: no byte of a body is read before its key is known to be good.
    app.add_middleware(AuthenticateFirst, prefix="/v1/")
    # Added after, so it runs before: a request waits for a slot before it touches the database.
    app.add_middleware(
        Admission,
        slots=settings.api_concurrency,
        wait_seconds=settings.db_pool_timeout_seconds,
        # They hold no connection while they wait on something else: an upload for its body as it streams, an
        # estimate for the estimating process (which takes two at a time), a chat for its answer.
        exempt=frozenset(
            {
                ("POST", "/v1/files"),
                ("POST", "/v1/fine_tuning/jobs/estimate"),
                ("POST", "/v1/chat/completions"),
            }
        ),
    )
    app.add_middleware(PagesLoadFromHere, paths=frozenset({"/", "/docs", "/redoc"}))
    install_error_handlers(app)
    # FastAPI tries routers in this order: the jobs routes, which the dashboard, SDK and CLI poll, first
    # (a GET job in process: 0.91x the CPU of trying health and files before them).
    for module in (jobs, health, files, models, projects, workers, webhooks, chat):
        app.include_router(module.router)
    app.include_router(projects.me_router)
    document_api_keys(app)

    # The dashboard: plain ES modules and vendored libraries from the package, no CDN and no build step.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "dashboard.html")

    return app
