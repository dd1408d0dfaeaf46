"""Request body limits enforced while the body streams in, so memory stays flat whatever a client sends.

An upload over the limit is read to its end and thrown away before the 413 goes out: most clients
send the whole body before reading a response, and closing on them would hide the 413 behind a reset.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

# Past this much, a client that keeps sending is cut off instead of drained.
DRAIN_LIMIT_BYTES = 4 << 30


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Caps each request's body: `upload_limit` for multipart uploads, `json_limit` for the rest."""

    def __init__(self, app: ASGIApp, *, upload_limit: int, json_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        is_upload = headers.get("content-type", "").startswith("multipart/form-data")
        limit = self.upload_limit if is_upload else self.json_limit
        declared = _int_or_none(headers.get("content-length"))
        if declared is not None and declared > limit:
            if declared <= DRAIN_LIMIT_BYTES:
                await _drain(receive)
            await _too_large(limit)(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _drain(receive, already=received)
                    # A starlette HTTPException passes through FastAPI's body parsing untouched.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> ASGIApp:
    return error_response(
        413,
        f"request body is larger than the limit of {limit} bytes",
        type="invalid_request_error",
        code="payload_too_large",
    )


async def _drain(receive: Receive, already: int = 0) -> None:
    total = already
    while total <= DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
