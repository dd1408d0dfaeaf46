"""The `loraq` command's exit codes, one meaning each, so that a CI step can branch on them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCEEDED = 0
    FAILED = 1
    CANCELLED = 2
    INVALID_REQUEST = 3
    UNREACHABLE = 4
    GATE_NOT_MET = 5


EXIT_CODES_HELP = (
    "Exit codes: 0 succeeded; 1 the job failed; 2 the job was cancelled; 3 invalid request (a 4xx answer, "
    "a bad flag or config); 4 server unreachable, a 5xx, or --timeout passed; 5 a quality gate not met."
)

JOB_STATUS_EXITS = {
    "succeeded": ExitCode.SUCCEEDED,
    "failed": ExitCode.FAILED,
    "cancelled": ExitCode.CANCELLED,
}
