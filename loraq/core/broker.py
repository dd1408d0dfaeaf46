"""The queue hand-off: the Celery app both sides share, and publishing "job X is ready".

Postgres is the source of truth; a message only rings the doorbell. Losing one loses no job:
the worker's reconciler publishes queued jobs again, and a claim makes duplicates harmless.
"""

from __future__ import annotations

import logging
from functools import lru_cache, partial
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from loraq.core import embedded_broker
from loraq.core.db import after_commit
from loraq.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "loraq.run_job"
CHAT_TASK = "loraq.chat_completion"
# Training jobs stay on Celery's default queue; chats have their own, served by each worker's chat
# process, so an answer never waits behind a training run.
JOBS_QUEUE = "celery"
CHAT_QUEUE = "chat"


def uses_embedded_broker(settings: Settings) -> bool:
    return not settings.broker_url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for multi-hour GPU tasks; each says why."""
    config: dict[str, Any] = {
        # Ack after the task finishes, so a worker that dies mid-run leaves the message to redeliver.
        "task_acks_late": True,
        # A child killed by the OS (OOM, kill -9) rejects its message instead of acking it.
        "task_reject_on_worker_lost": True,
        # Take one job at a time: a prefetched job would wait behind a long run on a busy worker.
        "worker_prefetch_multiplier": 1,
        # A fresh child per job returns all GPU and host memory the last run held.
        "worker_max_tasks_per_child": 1,
        # Postgres holds results and status; the broker result store would be a second truth.
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        # The API publishes inside a request: fail fast and let the reconciler publish later.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        "worker_hijack_root_logger": False,
        "task_default_queue": JOBS_QUEUE,
        "task_routes": {CHAT_TASK: {"queue": CHAT_QUEUE}},
    }
    if uses_embedded_broker(settings):
        folder = str(settings.broker_dir.resolve())
        for path in (settings.broker_dir, settings.broker_dir.with_name("broker-control")):
            path.mkdir(parents=True, exist_ok=True)
        config["broker_url"] = f"{embedded_broker.SCHEME}://"
        config["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(settings.broker_dir.with_name("broker-control").resolve()),
            "store_processed": False,
            # The folder is polled: kombu's default of once a second made the median pickup ~0.8 s.
            "polling_interval": 0.1,
        }
    else:
        config["broker_url"] = settings.broker_url
        config["broker_transport_options"] = {
            # Redis redelivers an unacked message after this long; it must outlast the longest job,
            # or a healthy long run would be handed to a second worker (the lease would refuse it).
            "visibility_timeout": settings.max_job_runtime_seconds + 3600,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        }
    return config


@lru_cache
def get_celery() -> Celery:
    settings = get_settings()
    app = Celery("loraq")
    app.conf.update(celery_config(settings))
    return app


def publish_job(job_id: str) -> None:
    get_celery().send_task(RUN_JOB_TASK, args=[job_id])


def publish_chat(request_id: str) -> None:
    """Ring a chat process's doorbell for a committed chat request; the caller answers if this fails."""
    get_celery().send_task(CHAT_TASK, args=[request_id])


def publish_after_commit(session: Session, job_id: str) -> None:
    """Publish once the job's row is committed, so a worker never receives an id it cannot read."""
    after_commit(session, partial(_publish_committed, job_id))


def _publish_committed(job_id: str) -> None:
    try:
        publish_job(job_id)
    except Exception:
        # Committed but not published: the reconciler will publish it.
        log.warning("could not publish job %s; the reconciler will", job_id, exc_info=True)
