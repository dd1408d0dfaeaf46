"""Every table, imported in one place so that `Base.metadata` is complete for Alembic and tests."""

from loraq.core.db import Base
from loraq.files.tables import File
from loraq.jobs.tables import Checkpoint, Job, JobEvent
from loraq.projects.tables import ApiKey, IdempotencyRecord, Project
from loraq.workers.tables import Worker

__all__ = [
    "ApiKey",
    "Base",
    "Checkpoint",
    "File",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "Project",
    "Worker",
]
