"""Domain errors that carry their HTTP meaning; the API turns them into OpenAI's error shape."""

from __future__ import annotations


class LoraqError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(LoraqError):
    pass


class Unauthorized(LoraqError):
    status_code = 401
    code = "invalid_api_key"


class Forbidden(LoraqError):
    status_code = 403
    code = "forbidden"


class NotFound(LoraqError):
    status_code = 404
    code = "not_found"


class Conflict(LoraqError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(LoraqError):
    status_code = 413
    code = "payload_too_large"


class TooManyRequests(LoraqError):
    status_code = 429
    type = "rate_limit_error"
    code = "limit_exceeded"


class ServiceUnavailable(LoraqError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"
