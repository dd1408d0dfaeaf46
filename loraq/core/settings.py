"""Settings read once from LORAQ_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    # A closed set: a typo such as "prod" must fail at start, not silently skip the production guard.
    environment: Literal["development", "production"] = Field(
        default="development", description="development | production"
    )
    home: Path = Field(default=Path("./var"), description="Embedded database, artifacts, models, admin key.")
    database_url: str = Field(default="", description="Empty: SQLite under home.")
    broker_url: str = Field(default="", description="Empty: a filesystem broker under home (no server).")
    storage_url: str = Field(
        default="", description="Empty: home/artifacts. Or file:///dir, s3://bucket/prefix."
    )
    s3_endpoint_url: str | None = None
    model_dirs: list[Path] = Field(
        default_factory=list, description="More directories of allowed base models."
    )
    allowed_hub_models: list[str] = Field(
        default_factory=list, description="Hub ids the operator allows; empty refuses every hub id."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    # A worker that stops renewing its lease for this long is presumed dead.
    lease_seconds: int = Field(default=60, ge=5)
    heartbeat_seconds: float = Field(default=10, gt=0)
    # A job whose worker dies this many times in a row without saving a new checkpoint fails.
    max_job_attempts: int = Field(default=3, ge=1)
    max_job_runtime_seconds: int = Field(default=24 * 3600, ge=60)
    reconcile_seconds: float = Field(default=15, gt=0)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_line_bytes: int = Field(default=1_000_000, ge=1024)
    max_json_body_bytes: int = Field(default=1 << 20, ge=1024, description="Every request but uploads.")
    # Per-project limits, unless a project sets its own.
    default_max_running_jobs: int = Field(default=4, ge=1)
    default_max_queued_jobs: int = Field(default=100, ge=1)
    default_max_storage_bytes: int = Field(default=50 << 30, ge=1)
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: for people; json: one object a line, for log shippers."
    )

    @model_validator(mode="after")
    def _refuse_embedded_defaults_in_production(self) -> Settings:
        if self.environment == "production" and not (self.database_url and self.broker_url):
            raise ValueError("production needs LORAQ_DATABASE_URL and LORAQ_BROKER_URL set explicitly")
        return self

    @property
    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{(self.home / 'loraq.db').resolve()}"
        # Plain postgresql:// means psycopg 3, the driver we ship.
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def scratch_dir(self) -> Path:
        """Where workers unpack a job's data and checkpoints while it runs."""
        return self.home / "scratch"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin.key"


@lru_cache
def get_settings() -> Settings:
    return Settings()
