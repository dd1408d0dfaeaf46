"""A typed Python client for loraq's REST API, on httpx; what the `loraq` command is built on.

It imports httpx, pydantic and loraq's light schemas only: no database, web framework, broker or torch.
"""

from loraq.client.client import Client
from loraq.client.errors import (
    APIError,
    ChecksumMismatch,
    InvalidRequestError,
    LoraqClientError,
    ServerError,
    UnreachableError,
    WaitTimeout,
)
from loraq.client.jobs import Update, request_body
from loraq.client.objects import (
    Checkpoint,
    Evaluation,
    FileObject,
    Job,
    JobEvent,
    Model,
    Page,
    Progress,
    Sample,
)
from loraq.client.retries import NO_RETRIES, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "APIError",
    "Checkpoint",
    "ChecksumMismatch",
    "Client",
    "Evaluation",
    "FileObject",
    "InvalidRequestError",
    "Job",
    "JobEvent",
    "LoraqClientError",
    "Model",
    "Page",
    "Progress",
    "RetryPolicy",
    "Sample",
    "ServerError",
    "UnreachableError",
    "Update",
    "WaitTimeout",
    "request_body",
]
