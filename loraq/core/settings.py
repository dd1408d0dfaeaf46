"""Settings read once from LORAQ_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loraq.core.cores import usable_cores

# The most API processes LORAQ_API_WORKERS=auto runs: two fill a two-core host (twice one's GETs a second);
# past that the API rarely needs more, and each more holds its own pool of Postgres's 100 connections.
AUTO_API_WORKERS = 2


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
    # A job's progress and metrics are committed in batches at most this often, off the training thread.
    report_interval_seconds: float = Field(default=1.0, gt=0)
    # Each job runs in a fresh child forked from the worker: importing torch and transformers there
    # once, not in every child, saves each job seconds before it loads anything.
    worker_preload: bool = Field(default=True, description="Import the training stack before forking.")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_line_bytes: int = Field(default=1_000_000, ge=1024)
    max_json_body_bytes: int = Field(default=1 << 20, ge=1024, description="Every request but uploads.")
    # Per-project limits, unless a project sets its own.
    default_max_running_jobs: int = Field(default=4, ge=1)
    default_max_queued_jobs: int = Field(default=100, ge=1)
    default_max_storage_bytes: int = Field(default=50 << 30, ge=1)
    # The API runs this many requests at once; more wait at the door, in order, up to
    # db_pool_timeout_seconds, then get a 503 with Retry-After. Each holds at most one connection. Few, since
    # requests share one GIL: past a handful, more at once mostly pass it back and forth and the slowest wait
    # longest (GET job at 64 clients: p99 51 ms with 4, 64 with 32, for 0.93x the throughput;
    # docs/benchmarks.md). Raise it for a database far away, where a request waiting on it holds its slot.
    api_concurrency: int = Field(default=4, ge=1, description="Requests one API process runs at once.")
    # Threads for those requests and for the ones that wait on something else without a slot: an upload's
    # body as it streams, an estimate while another process tokenizes.
    api_threads: int = Field(default=32, ge=1, description="Threads per API process; above api_concurrency.")
    # One process answers on one core (the GIL); "auto": one per core this process may use (its CPUs, and
    # its cgroup's CPU quota: a container's limit), up to two.
    api_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description="API processes, each on its own socket; auto: one per core, at most 2."
    )
    # A revocation applies at once in every API process of the machine that made it (they share a count),
    # within this many seconds on other machines.
    api_key_cache_seconds: float = Field(
        default=10, ge=0, description="How long an API process trusts a key it checked; 0: every request."
    )
    # Two API processes with a burst each (x1.25) take 85 of Postgres's default 100 connections.
    db_pool_size: int = Field(default=34, ge=1, description="Connections per process; above api_threads.")
    db_pool_timeout_seconds: float = Field(
        default=3, gt=0, description="The longest wait for a free slot or connection before a 503."
    )
    access_log: bool = Field(
        default=True,
        description="A line per request; off behind a proxy that logs them (~6-17% of a GET's CPU).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: for people; json: one object a line, for log shippers."
    )
    # Webhooks go to public https URLs only, unless the operator allows more (a private network allows http).
    webhook_allow_private_networks: bool = False
    webhook_allow_http: bool = False
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=60)
    # Multiplies the retry schedule's delays (5 s ... 10 h, about 26 h in all); tests shrink it.
    webhook_retry_scale: float = Field(default=1.0, gt=0)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    webhook_delivery_retention_days: float = Field(
        default=30,
        ge=0,
        description="Settled deliveries and their attempts are deleted after this; 0 keeps all.",
    )
    webhook_secrets_key: SecretStr = Field(
        default=SecretStr(""), description="A Fernet key; set, webhook signing secrets are stored encrypted."
    )
    # /v1/chat/completions: answered by each worker's chat process, which keeps models loaded.
    chat_max_completion_tokens: int = Field(default=512, ge=1, description="The most tokens one answer has.")
    chat_timeout_seconds: float = Field(default=120, gt=0, description="The longest a chat request waits.")
    chat_max_base_models: int = Field(default=1, ge=1, description="Base models a chat process keeps loaded.")
    chat_max_adapters: int = Field(default=4, ge=1, description="Adapters a chat process keeps loaded.")

    @field_validator("webhook_secrets_key")
    @classmethod
    def _usable_fernet_key(cls, key: SecretStr) -> SecretStr:
        # A bad key must stop the start, not every delivery later.
        if key.get_secret_value():
            from cryptography.fernet import Fernet

            Fernet(key.get_secret_value().encode())
        return key

    @model_validator(mode="after")
    def _refuse_embedded_defaults_in_production(self) -> Settings:
        if self.environment == "production" and not (self.database_url and self.broker_url):
            raise ValueError("production needs LORAQ_DATABASE_URL and LORAQ_BROKER_URL set explicitly")
        return self

    @property
    def api_processes(self) -> int:
        if self.api_workers != "auto":
            return self.api_workers
        return min(AUTO_API_WORKERS, usable_cores())

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
    def hash_cache_dir(self) -> Path:
        """Content hashes of large files that do not change (base model weights), by file identity."""
        return self.home / "cache" / "sha256"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin.key"


@lru_cache
def get_settings() -> Settings:
    return Settings()
