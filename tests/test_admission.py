"""Admission (api/admission.py): an API process runs LORAQ_API_CONCURRENCY requests at once; the rest wait at
the door in the order they came, for a bounded time, then get a 503 with Retry-After. Requests that wait on
something else (an upload's body, an estimate's tokenizing, a chat's answer) take no slot.

Driven in process through the ASGI interface: what is under test is the middleware's own bookkeeping. The
end-to-end overload test, over real HTTP against a real server, is in test_performance.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from api.admission import Admission

SLOW, FAST, EXEMPT, STREAM = "/v1/slow", "/v1/fast", "/v1/exempt", "/v1/stream"


class Routes:
    """A bare ASGI app: SLOW and EXEMPT answer once `release` is set, STREAM starts its answer at once and
    finishes it then, FAST answers at once. `started` records the order requests reached it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.started.append(scope["query_string"].decode() or path)
        if path == STREAM:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"done"})
            return
        if path in (SLOW, EXEMPT):
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _admitted(routes: Routes, *, slots: int = 1, wait_seconds: float = 5) -> httpx.AsyncClient:
    app = Admission(routes, slots=slots, wait_seconds=wait_seconds, exempt=frozenset({("GET", EXEMPT)}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://loraq", timeout=10)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_a_request_that_waits_too_long_gets_a_503_and_the_door_opens_again() -> None:
    async def scenario() -> None:
        routes = Routes()
        async with _admitted(routes, wait_seconds=0.3) as client:
            holder = asyncio.create_task(client.get(SLOW))
            await _until(lambda: routes.started == [SLOW])
            busy = await client.get(FAST)
            assert busy.status_code == 503
            assert busy.headers["Retry-After"] == "1"
            assert busy.json()["error"]["code"] == "service_unavailable"
            assert routes.started == [SLOW]  # the refused request never reached the app
            routes.release.set()
            assert (await holder).status_code == 200
            assert (await client.get(FAST)).status_code == 200

    asyncio.run(scenario())


def test_waiting_requests_are_let_in_first_come_first_served() -> None:
    async def scenario() -> None:
        routes = Routes()
        async with _admitted(routes) as client:
            holder = asyncio.create_task(client.get(SLOW))
            await _until(lambda: routes.started == [SLOW])
            waiting = []
            for index in range(5):
                waiting.append(asyncio.create_task(client.get(FAST, params={str(index): ""})))
                await asyncio.sleep(0.02)  # each has reached the door before the next is sent
            assert routes.started == [SLOW]
            routes.release.set()
            assert [answer.status_code for answer in await asyncio.gather(holder, *waiting)] == [200] * 6
            assert routes.started == [SLOW, "0=", "1=", "2=", "3=", "4="]

    asyncio.run(scenario())


def test_an_exempt_request_takes_no_slot() -> None:
    async def scenario() -> None:
        routes = Routes()
        async with _admitted(routes, wait_seconds=0.3) as client:
            exempt = asyncio.create_task(client.get(EXEMPT))
            await _until(lambda: routes.started == [EXEMPT])
            assert (await client.get(FAST)).status_code == 200  # the one slot is free
            routes.release.set()
            assert (await exempt).status_code == 200

    asyncio.run(scenario())


def test_a_request_leaves_its_slot_when_its_answer_starts() -> None:
    """A long download holds no slot while its body streams."""

    async def scenario() -> None:
        routes = Routes()
        async with _admitted(routes, wait_seconds=0.3) as client:
            streaming = asyncio.create_task(client.get(STREAM))
            await _until(lambda: routes.started == [STREAM])
            await asyncio.sleep(0.05)
            assert (await client.get(FAST)).status_code == 200
            routes.release.set()
            assert (await streaming).text == "done"

    asyncio.run(scenario())


def test_the_app_exempts_the_routes_that_wait_on_something_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads, estimates and chats, and each exemption names a route the app has (a renamed route would
    otherwise quietly take slots again)."""
    from api.app import create_app
    from loraq.core.settings import get_settings

    monkeypatch.setenv("LORAQ_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        app = create_app()
        (admission,) = [each for each in app.user_middleware if each.cls is Admission]
        exempt = admission.kwargs["exempt"]
        assert admission.kwargs["slots"] == get_settings().api_concurrency
        operations = {
            (method.upper(), path) for path, methods in app.openapi()["paths"].items() for method in methods
        }
    finally:
        get_settings.cache_clear()
    assert {
        ("POST", "/v1/files"),
        ("POST", "/v1/fine_tuning/jobs/estimate"),
        ("POST", "/v1/chat/completions"),
    } == exempt
    assert exempt <= operations
