"""The FastAPI application factory."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi_offline import FastAPIOffline

from api.errors import install_error_handlers
from api.limits import AuthenticateFirst, BodyLimitMiddleware
from api.routes import files, health, jobs, models, projects, workers
from api.schemas.common import ErrorResponse
from loraq.core.settings import get_settings

STATIC_DIR = Path(__file__).parent / "static"


def create_app() -> FastAPI:
    # FastAPIOffline: /docs (Swagger UI) and /redoc load their scripts from the installed package,
    # so they work on a machine with no internet access.
    app = FastAPIOffline(
        title="loraq",
        version="0.1.0",
        description="LoRA/QLoRA fine-tuning as a job queue, shaped like OpenAI's fine-tuning API.",
        responses={status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 429, 503)},
    )
    settings = get_settings()
    # Multipart framing adds a little to the file itself, whose own limit the upload checks.
    app.add_middleware(
        BodyLimitMiddleware,
        upload_limit=settings.max_upload_bytes + (1 << 20),
        json_limit=settings.max_json_body_bytes,
        upload_routes=frozenset({("POST", "/v1/files")}),
    )
    # Added last, so it runs first: no byte of a body is read before its key is known to be good.
    app.add_middleware(AuthenticateFirst, prefix="/v1/")
    install_error_handlers(app)
    for module in (health, files, jobs, models, projects, workers):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "dashboard.html")

    return app
