"""Admission: an API process serves as many requests at once as it has threads and connections for.

The rest wait at the door, in order, for at most a few seconds, then get a 503 with Retry-After. Without
it, every request starts, each takes a database connection between its hops through the thread pool,
and past the pool's size all of them wait for connections the others hold: a stall, then 500s.
A request leaves its slot once its response starts, so a long download holds none.
"""

from __future__ import annotations

import logging

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BUSY_RETRY_AFTER, error_response

log = logging.getLogger(__name__)


class Admission:
    """Lets at most `slots` requests under `prefix` run at once; a request waits `wait_seconds` at most."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        slots: int,
        wait_seconds: float,
        prefix: str = "/v1/",
        exempt: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self.app = app
        self.slots = slots
        self.wait_seconds = wait_seconds
        self.prefix = prefix
        self.exempt = exempt  # (method, path) of requests that hold no connection while they last (uploads)
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop, on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(self.prefix)
            or (scope["method"], scope["path"]) in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.slots)
        limiter, borrower = self._limiter, object()
        with anyio.move_on_after(self.wait_seconds):
            await limiter.acquire_on_behalf_of(borrower)
        if borrower not in limiter.statistics().borrowers:
            log.warning("busy: %d requests in progress and more waiting; answered 503", self.slots)
            busy = error_response(
                503,
                "the server is busy; retry shortly",
                type="server_error",
                code="service_unavailable",
                headers=BUSY_RETRY_AFTER,
            )
            await busy(scope, receive, send)
            return
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                limiter.release_on_behalf_of(borrower)

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()
