"""When the client sends a request again: only when doing so cannot do the work twice."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Answers that say the server did none of the work: busy or down (503), or asked to slow down (429).
RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `backoff` seconds, doubled each retry up to `max_backoff`; a Retry-After
    header wins (up to `max_retry_after`)."""

    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, retry: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        told = retry_after_seconds(response) if response is not None else None
        if told is not None:
            return min(told, self.max_retry_after)
        return float(min(self.backoff * 2**retry, self.max_backoff))


NO_RETRIES = RetryPolicy(retries=0)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def should_retry_answer(response: httpx.Response, *, idempotency_key: str | None) -> bool:
    """An answer that asks for the same request again: busy, or the keyed create still in progress."""
    if response.status_code in RETRIED_STATUSES:
        return True
    if response.status_code != 409 or idempotency_key is None:
        return False
    # The first request with this key is still being answered (not a key reused for another body).
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return False
    return bool(error.get("param") == IDEMPOTENCY_HEADER and error.get("code") != "idempotency_key_reused")


def may_resend(error: httpx.TransportError, *, replayable: bool) -> bool:
    """A request that failed in transport can go again if it never left, or if repeating it is harmless."""
    never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return never_sent or replayable
