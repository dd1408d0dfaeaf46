"""Admission: an API process runs a few requests at once (LORAQ_API_CONCURRENCY).

The rest wait at the door, in order, for at most a few seconds, then get a 503 with Retry-After. Without
it, every request starts, each takes a database connection between its hops through the thread pool,
and past the pool's size all of them wait for connections the others hold: a stall, then 500s. And the
requests a process runs share one interpreter lock: past a handful at once they mostly pass it back and
forth, and the slowest wait longest (docs/benchmarks.md).
A request leaves its slot once its response starts, so a long download holds none.
"""

from __future__ import annotations

import asyncio
import logging

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
        self._slots: asyncio.Semaphore | None = None  # made in the event loop, on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(self.prefix)
            or (scope["method"], scope["path"]) in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.slots)
        slots = self._slots
        if not await _acquire_within(slots, self.wait_seconds):
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
                slots.release()

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()


async def _acquire_within(slots: asyncio.Semaphore, seconds: float) -> bool:
    # A free slot is taken without a timer: the common case costs no more than a counter. asyncio's
    # semaphore is first come, first served: a request that arrives while others wait queues behind them.
    if not slots.locked():
        return await slots.acquire()
    try:
        async with asyncio.timeout(seconds):
            return await slots.acquire()
    except TimeoutError:
        return False
