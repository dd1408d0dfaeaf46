"""Every error leaves the API in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from api.bodies import TooLargeInteger
from loraq.core.errors import LoraqError, ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER = {"Retry-After": "5"}
# Overload passes in moments: a busy server asks for a retry sooner than an outage does.
BUSY_RETRY_AFTER = {"Retry-After": "1"}


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def response_for(error: Exception) -> JSONResponse | None:
    """The answer to an error the API expects (a caller's mistake, an outage); None for a bug.

    One table for the exception handlers and for the middleware that runs outside them.
    """
    if isinstance(error, LoraqError):
        headers = RETRY_AFTER if isinstance(error, ServiceUnavailable) else None
        return error_response(
            error.status_code,
            error.message,
            type=error.type,
            param=error.param,
            code=error.code,
            headers=headers,
        )
    if isinstance(error, PoolTimeout):
        log.warning("no database connection free: %s", error)
        return _unavailable(
            "the server is busy: no database connection is free; retry shortly", headers=BUSY_RETRY_AFTER
        )
    # A connection that dies mid-query surfaces as a DBAPIError with connection_invalidated set.
    if isinstance(error, OperationalError | InterfaceError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        log.warning("database unavailable: %s", error)
        return _unavailable("the database is unavailable; retry shortly")
    # A value the database refuses (a NUL in text, a number out of range) that got past the edge's checks:
    # the request's fault, and no outage.
    if isinstance(error, DataError):
        log.warning("database refused a value: %s", error.orig)
        return error_response(
            400,
            "a value in this request cannot be stored (for example text with a NUL character)",
            type="invalid_request_error",
            code="invalid_value",
        )
    if isinstance(error, ClientDisconnect):
        # Nobody is left to read this; it only keeps a disconnect out of the 500s.
        return error_response(
            400, "the client disconnected before the body ended", type="invalid_request_error"
        )
    return None


def _unavailable(message: str, *, headers: dict[str, str] = RETRY_AFTER) -> JSONResponse:
    return error_response(503, message, type="server_error", code="service_unavailable", headers=headers)


_SOURCES = {"body", "query", "path", "header", "form", "cookie"}


def _location(loc: tuple[Any, ...], body: Any) -> str:
    """('body', 'adapter', 'r') -> 'adapter.r', following the request body so that pydantic's
    names for union branches ('constrained-int', "literal['auto']") are left out."""
    pieces = list(loc[1:] if loc and loc[0] in _SOURCES else loc)
    current = body if loc and loc[0] == "body" else None
    path = ""
    for index, piece in enumerate(pieces):
        is_last = index == len(pieces) - 1
        if isinstance(current, list) and isinstance(piece, int) and piece < len(current):
            path += f"[{piece}]"
            current = current[piece]
        elif isinstance(current, dict) and piece in current:
            path += ("." if path else "") + str(piece)
            current = current[piece]
        elif current is None or (is_last and isinstance(current, dict)):
            # Not in the input: a missing field, or a query/form parameter.
            path += ("." if path else "") + str(piece)
            current = None
    return path


def _problem_at(problem: Any) -> tuple[Any, ...]:
    """Where a problem is: its loc, and below it the field a rule between fields names (spec.broken_rule)."""
    field = (problem.get("ctx") or {}).get("field")
    return tuple(problem.get("loc", ())) + (tuple(field.split(".")) if isinstance(field, str) else ())


def _message(problem: Any) -> str:
    if isinstance(problem.get("input"), TooLargeInteger) and problem.get("type") != "extra_forbidden":
        return "integer too large"
    return str(problem.get("msg") or "")


async def _on_known_error(_request: Request, error: Exception) -> JSONResponse:
    response = response_for(error)
    return response if response is not None else await _on_unexpected(_request, error)


async def _on_validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    body = getattr(error, "body", None)
    problems: dict[str, list[str]] = {}
    for problem in error.errors():
        messages = problems.setdefault(_location(_problem_at(problem), body), [])
        if (message := _message(problem)) and message not in messages:
            messages.append(message)
    # The first field that is wrong, with every way it could have been right (union branches).
    param, messages = next(iter(problems.items()))
    message = ", or ".join(messages) or "invalid value"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more field{'s' if len(problems) > 2 else ''} to fix)"
    return error_response(
        400,
        f"{param}: {message}" if param else message,
        type="invalid_request_error",
        param=param or None,
        code="invalid_value",
    )


async def _on_http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(error.status_code)
    return error_response(error.status_code, str(error.detail), type="invalid_request_error", code=code)


async def _on_unexpected(_request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal server error", type="server_error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    for known in (LoraqError, DBAPIError, PoolTimeout, ClientDisconnect):
        app.add_exception_handler(known, _on_known_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
