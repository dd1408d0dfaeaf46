"""Publish jobs the broker may have lost, and delete what finished jobs no longer need, from a thread in
the worker's main process.

A thread and not a Celery task: with one task at a time per worker, a reconcile task would wait
behind every multi-hour training run, and its periodic messages would pile up in the queue.
"""

from __future__ import annotations

import logging
import threading

from loraq.core.broker import publish_job
from loraq.core.db import session_scope
from loraq.jobs import runs
from loraq.storage.stores import get_store
from loraq.webhooks import service as webhooks

log = logging.getLogger(__name__)


def reconcile_once(*, republish_after: float, delivery_retention_days: float) -> list[str]:
    """Publish queued jobs nobody took lately, and running jobs whose worker's lease expired; delete what
    finished jobs and settled webhook deliveries no longer need."""
    with session_scope() as session:
        job_ids = runs.jobs_to_publish(session, republish_after=republish_after)
    for job_id in job_ids:
        publish_job(job_id)
    if job_ids:
        log.info("reconciler published %d job(s): %s", len(job_ids), ", ".join(job_ids))
    # A finished job (succeeded, failed or cancelled, wherever that happened) resumes no more.
    with session_scope() as session:
        released = runs.release_finished_resume_states(session, delete=get_store().delete)
    if released:
        log.info("reconciler deleted the resume state of %d finished checkpoint(s)", released)
    with session_scope() as session:
        pruned = webhooks.prune_deliveries(session, retention_days=delivery_retention_days)
    if pruned:
        log.info("reconciler deleted %d webhook deliveries past their retention", pruned)
    return job_ids


def start_reconciler(*, interval: float, delivery_retention_days: float) -> threading.Event:
    """Run reconcile_once every `interval` seconds until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                # A job is published again only after several intervals, so a healthy queue
                # gets no duplicates (which a claim would refuse anyway).
                reconcile_once(republish_after=interval * 4, delivery_retention_days=delivery_retention_days)
            except Exception:
                log.warning("reconcile failed; retrying in %ss", interval, exc_info=True)

    threading.Thread(target=loop, name="loraq-reconciler", daemon=True).start()
    return stop
