"""What a request may cost before it is trusted: its API key is checked before a byte of its body is read,
then its body is capped as it streams in, so memory stays flat whatever a client sends.

An unauthenticated request is answered at once and its body never read: the server discards what still
arrives. An authenticated upload over the limit is read to its end and thrown away before the 413 goes
out: most clients send the whole body before reading a response, and closing on them would hide the 413
behind a reset.
"""

from __future__ import annotations

import anyio.to_thread
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import (
    API_KEY_STATE,
    READ_METHODS,
    READ_SESSION_STATE,
    authenticate_bearer,
    recently_checked_bearer,
)
from api.errors import error_response, response_for
from loraq.core.db import get_read_sessionmaker
from loraq.projects.keys import CheckedKey

# Past this much, a client that keeps sending is cut off instead of drained.
DRAIN_LIMIT_BYTES = 4 << 30


class AuthenticateFirst:
    """Checks the API key of every request under `prefix` before the route, and so before its body.

    FastAPI reads a body (a whole multipart form, even) before it runs a route's dependencies; a key
    checked there would come after the server had taken in whatever an anonymous client sent.
    """

    def __init__(self, app: ASGIApp, *, prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] + "/").startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        if (recent := recently_checked_bearer(authorization)) is not None:
            # Checked a moment ago (loraq.projects.keys.RecentKeys): no query, no trip through the pool.
            scope.setdefault("state", {})[API_KEY_STATE] = recent
            await self.app(scope, receive, send)
            return
        # A read keeps the session its key was checked with, for its route (api.deps.get_session): one
        # connection and one thread hop fewer. Any other request lets go of the connection at once: an
        # upload's body may stream for minutes.
        reads = scope["method"] in READ_METHODS
        with get_read_sessionmaker()() as session:  # closed on the way out, whatever the route did with it
            try:
                # The key is looked up in the database: off the event loop.
                key = await anyio.to_thread.run_sync(
                    authenticate_bearer if reads else _authenticate_and_close, session, authorization
                )
            except Exception as error:
                # Outside FastAPI's exception handlers: the same table answers here.
                response = response_for(error)
                if response is None:
                    raise
                await response(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state[API_KEY_STATE] = key
            if reads:
                state[READ_SESSION_STATE] = session
            await self.app(scope, receive, send)


def _authenticate_and_close(session: Session, authorization: str | None) -> CheckedKey:
    with session:
        return authenticate_bearer(session, authorization)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Caps each request's body: `upload_limit` for the upload routes, `json_limit` for every other.

    By route, not by content type: a JSON route sent `multipart/form-data` still gets the JSON limit.
    """

    def __init__(
        self, app: ASGIApp, *, upload_limit: int, json_limit: int, upload_routes: frozenset[tuple[str, str]]
    ) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.json_limit = json_limit
        self.upload_routes = upload_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = (scope["method"], scope["path"]) in self.upload_routes
        limit = self.upload_limit if is_upload else self.json_limit
        declared = _int_or_none(Headers(scope=scope).get("content-length"))
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
