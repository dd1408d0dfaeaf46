"""The client's HTTP core: one httpx.Client, and retries that cannot do the work twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from loraq.client.errors import UnreachableError, error_for
from loraq.client.retries import RetryPolicy, may_resend, should_retry_answer

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class Http:
    """Sends requests with the key, retries what is safe to retry, and raises typed errors."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None,
        sleep: Callable[[float], None],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._sleep = sleep
        self.client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "loraq-client"},
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:  # never the key
        return f"Http({self.base_url!r})"

    def call(
        self,
        send: Callable[[httpx.Client], httpx.Response],
        *,
        replayable: bool,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Run `send` until it gets an answer that is not a retry signal, then raise for an error answer.

        `replayable`: the request may be sent again after it may have reached the server (a read, or a
        create under an Idempotency-Key). Anything else is resent only when it never left.
        """
        retry = 0
        while True:
            try:
                response = send(self.client)
            except httpx.TransportError as error:
                if retry >= self.retry.retries or not may_resend(error, replayable=replayable):
                    raise UnreachableError(f"{self.base_url}: {_describe(error)}") from error
                self._sleep(self.retry.delay(retry))
            else:
                if retry >= self.retry.retries or not should_retry_answer(
                    response, idempotency_key=idempotency_key
                ):
                    return _checked(response)
                self._sleep(self.retry.delay(retry, response))
            retry += 1

    def get(self, path: str, **params: Any) -> Any:
        """GET a JSON answer (None-valued params are left out)."""
        query = {name: value for name, value in params.items() if value is not None}
        return self.call(lambda http: http.get(path, params=query), replayable=True).json()

    def delete(self, path: str) -> Any:
        """DELETE is idempotent: a lost answer is safely sent again."""
        return self.call(lambda http: http.delete(path), replayable=True).json()

    def post(
        self, path: str, body: Any = None, *, replayable: bool, idempotency_key: str | None = None
    ) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.call(
            lambda http: http.post(path, json=body, headers=headers),
            replayable=replayable or idempotency_key is not None,
            idempotency_key=idempotency_key,
        ).json()


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_for(response.status_code, body, f"HTTP {response.status_code}: {response.text[:200]}")


def _describe(error: httpx.TransportError) -> str:
    return str(error) or type(error).__name__
