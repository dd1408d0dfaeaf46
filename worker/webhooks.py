"""Send the webhook deliveries that are due, from a thread in the worker's main process.

A thread and not a Celery task, as the reconciler: deliveries must not wait behind a training run.
Each delivery is claimed under a short lease in its own transaction, posted outside any transaction,
and its attempt recorded in another; a sender killed mid-send leaves a claim that lapses, so another
worker (or the next one started) sends it again.
"""

from __future__ import annotations

import logging
import threading
import time

from loraq.core.db import session_scope
from loraq.core.settings import Settings
from loraq.webhooks import service
from loraq.webhooks.destinations import Attempt, Policy, send
from loraq.webhooks.sealing import UnsealError, unseal
from loraq.webhooks.signing import signed_headers

log = logging.getLogger(__name__)

# The most deliveries one pass sends, so that a backlog cannot starve the thread's stop check.
MAX_PER_PASS = 100


def send_due(settings: Settings) -> int:
    """Send each delivery that is due now, one at a time; how many were attempted."""
    policy = Policy.from_settings(settings)
    # Longer than a send can take: the claim must not lapse while its attempt is still in flight.
    lease_seconds = 3 * policy.timeout_seconds + 10
    sent = 0
    while sent < MAX_PER_PASS:
        with session_scope() as session:
            outgoing = service.claim_next(session, lease_seconds=lease_seconds)
        if outgoing is None:
            break
        attempt = _attempt(outgoing, settings, policy)
        with session_scope() as session:
            status = service.record_attempt(
                session, outgoing, attempt, retry_scale=settings.webhook_retry_scale
            )
        sent += 1
        if status != "succeeded":
            log.info(
                "webhook %s to %s: %s; %s",
                outgoing.delivery_id,
                outgoing.url,
                attempt.error or f"HTTP {attempt.status_code}",
                "will retry" if status == "pending" else "giving up",
            )
    return sent


def _attempt(outgoing: service.Outgoing, settings: Settings, policy: Policy) -> Attempt:
    """Sign the delivery now (its timestamp is this attempt's) and post it once."""
    try:
        secret = unseal(outgoing.sealed_secret, settings.webhook_secrets_key.get_secret_value())
    except UnsealError as error:
        return Attempt(status_code=None, error=str(error), response_excerpt=None, duration_ms=0)
    timestamp = int(time.time())
    headers = signed_headers(
        secret, message_id=outgoing.delivery_id, timestamp=timestamp, body=outgoing.payload
    )
    return send(outgoing.url, body=outgoing.payload, headers=headers, policy=policy)


def start_webhook_sender(settings: Settings) -> threading.Event:
    """Run send_due every `webhook_poll_seconds` until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.webhook_poll_seconds):
            try:
                send_due(settings)
            except Exception:
                log.warning(
                    "webhook sending failed; retrying in %ss", settings.webhook_poll_seconds, exc_info=True
                )

    threading.Thread(target=loop, name="loraq-webhooks", daemon=True).start()
    return stop
