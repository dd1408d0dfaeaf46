"""The worker's Celery app: the shared configuration from `loraq.core.broker` and the worker's tasks."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from loraq.core.broker import get_celery
from loraq.core.db import get_engine

app = get_celery()
app.conf.include = ["worker.tasks"]


@worker_process_init.connect
def _fresh_database_connections(**_kwargs: Any) -> None:
    # A forked child must not reuse the parent's pooled connections (the reconciler's).
    get_engine().dispose(close=False)
