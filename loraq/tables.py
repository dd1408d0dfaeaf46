"""Every table, imported in one place so that `Base.metadata` is complete for Alembic and tests."""

from loraq.chat.tables import ChatRequest
from loraq.core.db import Base
from loraq.files.tables import File
from loraq.jobs.tables import Checkpoint, Job, JobEvent, JobSample
from loraq.projects.tables import ApiKey, IdempotencyRecord, Project
from loraq.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from loraq.workers.tables import Worker

__all__ = [
    "ApiKey",
    "Base",
    "ChatRequest",
    "Checkpoint",
    "File",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "JobSample",
    "Project",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "Worker",
]
