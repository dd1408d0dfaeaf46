"""The route class of every router: a plain `def` endpoint makes one trip through the thread pool, not two."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool


class OneHopRoute(APIRoute):
    """Runs a `def` endpoint in the thread pool, as FastAPI does, then lets FastAPI check its answer on
    the event loop, as it does for an `async def` one.

    FastAPI sends a `def` endpoint's return value back through the pool to validate it against the
    response model: a second trip for a check that takes microseconds on an object of the model's own
    type. Each trip costs the GIL changing hands twice, and under load that costs more CPU than the
    check itself (docs/benchmarks.md).
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # async def as it is; a generator endpoint (a stream) is left to FastAPI, which iterates it.
        if not (
            inspect.iscoroutinefunction(endpoint)
            or inspect.isgeneratorfunction(endpoint)
            or inspect.isasyncgenfunction(endpoint)
        ):
            endpoint = _in_thread_pool(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _in_thread_pool(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    # functools.wraps: FastAPI reads the parameters, their annotations and the name from `endpoint`.
    @functools.wraps(endpoint)
    async def run(**arguments: Any) -> Any:
        return await run_in_threadpool(endpoint, **arguments)

    return run
