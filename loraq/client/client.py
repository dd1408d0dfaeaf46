"""loraq's HTTP client: typed answers, typed errors, and retries that cannot do the work twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from loraq.client.files import Files
from loraq.client.http import DEFAULT_TIMEOUT, Http
from loraq.client.jobs import Jobs
from loraq.client.objects import Model, Page
from loraq.client.retries import RetryPolicy


class Client:
    """`Client(base_url, api_key)`: `.files`, `.jobs` and `.models`, each method one API call (or a few).

    A failed call raises loraq.client.errors: InvalidRequestError (4xx), ServerError (5xx), UnreachableError.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._core = Http(
            base_url, api_key, timeout=timeout, retry=retry or RetryPolicy(), transport=transport, sleep=sleep
        )
        self.base_url = self._core.base_url
        self.files = Files(self._core)
        self.jobs = Jobs(self._core, self.files)
        self.models = Models(self._core)

    def __repr__(self) -> str:  # never the key
        return f"Client({self.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._core.client.close()

    @property
    def http(self) -> httpx.Client:
        """The underlying httpx client (base URL and key set), for a call this client lacks."""
        return self._core.client


class Models:
    """/v1/models: the base models this server offers and the adapters this project trained."""

    def __init__(self, http: Http) -> None:
        self._http = http

    def list(self) -> Page[Model]:
        return Page[Model].model_validate(self._http.get("/v1/models"))
