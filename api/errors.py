"""Every error leaves the API in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraq.errors import LoraqError, ServiceUnavailable

log = logging.getLogger(__name__)


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


async def _on_domain_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, LoraqError)
    headers = {"Retry-After": "5"} if isinstance(error, ServiceUnavailable) else None
    return error_response(
        error.status_code, error.message, type=error.type, param=error.param, code=error.code, headers=headers
    )


async def _on_validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    body = getattr(error, "body", None)
    problems: dict[str, list[str]] = {}
    for problem in error.errors():
        messages = problems.setdefault(_location(tuple(problem.get("loc", ())), body), [])
        if problem.get("msg") and problem["msg"] not in messages:
            messages.append(problem["msg"])
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


async def _on_database_down(_request: Request, error: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", error)
    return error_response(
        503,
        "the database is unavailable; retry shortly",
        type="server_error",
        code="service_unavailable",
        headers={"Retry-After": "5"},
    )


async def _on_unexpected(_request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal server error", type="server_error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LoraqError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(OperationalError, _on_database_down)
    # A connection that dies mid-query surfaces as a DBAPIError with connection_invalidated set.
    app.add_exception_handler(DBAPIError, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
