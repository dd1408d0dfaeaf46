"""The client's exceptions: an API error keeps the API's error shape; a transport failure says so."""

from __future__ import annotations

from typing import Any


class LoraqClientError(Exception):
    """Anything the client raises."""


class APIError(LoraqClientError):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}, and its status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
            "status": self.status,
        }

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status} {self.type or 'error'}: {self.message}{where}"


class InvalidRequestError(APIError):
    """A 4xx: the request is wrong (or not allowed) and sending it again will not help."""


class ServerError(APIError):
    """A 5xx that outlasted the retries."""


class UnreachableError(LoraqClientError):
    """No answer from the server: refused, reset or timed out, after the retries."""


class WaitTimeout(LoraqClientError):
    """A job did not finish within the time a wait was given."""

    def __init__(self, job_id: str, seconds: float) -> None:
        super().__init__(f"job {job_id} did not finish within {seconds:g} s")
        self.job_id = job_id
        self.seconds = seconds


class ChecksumMismatch(LoraqClientError):
    """A download whose bytes do not hash to the sha256 the API gives for the file."""


def error_for(status: int, body: Any, fallback: str) -> APIError:
    """The typed exception for an error answer; tolerant of a body that is not the API's shape."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": fallback}
    kind = ServerError if status >= 500 else InvalidRequestError
    return kind(
        str(error.get("message") or fallback),
        status=status,
        type=_text(error.get("type")),
        param=_text(error.get("param")),
        code=_text(error.get("code")),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
