"""The job state machine's rules: the statuses, and which status each may be reached from.

The rules are enforced by `jobs.repository.transition`, a conditional UPDATE whose WHERE clause
holds them, so two processes racing cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

# target status -> the statuses it may be reached from
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    JobStatus.FAILED: ACTIVE,
    JobStatus.CANCELLED: ACTIVE,
}


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a job: who holds it, for which job."""

    job_id: str
    owner: str
