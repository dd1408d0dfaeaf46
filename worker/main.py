"""`loraq-worker`: make sure the demo base model exists, then run one Celery worker and the reconciler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

from celery.signals import after_setup_task_logger

from loraq.base_models.catalog import DEMO_MODEL_NAME
from loraq.core.logs import configure_logging
from loraq.core.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    # The task logs each job's end at its real level; Celery's own line would call a failed job
    # "succeeded" (the task returns normally, so its message is acked, never retried).
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    if not settings.allowed_hub_models:
        # Nothing may be fetched from a model hub unless the operator allowed a hub model.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (settings.models_dir / DEMO_MODEL_NAME / "config.json").exists():
        # In a child process: this one forks Celery's pool and must not have started torch.
        subprocess.run([sys.executable, "-m", "worker.demo_model", str(settings.models_dir)], check=True)

    from loraq.storage.scratch import remove_stale_scratch
    from worker.celery_app import app
    from worker.reconciler import start_reconciler
    from worker.registration import start_registration

    # Before the pool forks: the scratch dirs that killed workers of this host left go now.
    remove_stale_scratch(settings.scratch_dir)
    start_registration(interval=settings.heartbeat_seconds)
    start_reconciler(interval=settings.reconcile_seconds)
    app.worker_main(
        [
            # Celery's banner is printed, not logged: it would break a log of JSON lines.
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            "--loglevel=INFO",
            "--pool=prefork",
            "--concurrency=1",
            # Mingle and gossip talk between workers over broadcast; the filesystem broker has none.
            "--without-mingle",
            "--without-gossip",
            *sys.argv[1:],
        ]
    )


@after_setup_task_logger.connect
def _one_format_for_celery(**_kwargs: Any) -> None:
    """Celery gives its task and pool loggers handlers of its own format: send their records to ours."""
    for name in ("celery.task", "multiprocessing"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


if __name__ == "__main__":
    main()
