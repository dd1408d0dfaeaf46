"""`loraq-worker`: make sure the demo base model exists, then run one Celery worker and the reconciler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from loraq.base_models import DEMO_MODEL_NAME
from loraq.settings import get_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if not settings.allowed_hub_models:
        # Nothing may be fetched from a model hub unless the operator allowed a hub model.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (settings.models_dir / DEMO_MODEL_NAME / "config.json").exists():
        # In a child process: this one forks Celery's pool and must not have started torch.
        subprocess.run([sys.executable, "-m", "worker.demo_model", str(settings.models_dir)], check=True)

    from worker.celery_app import app
    from worker.reconciler import start_reconciler

    start_reconciler(interval=settings.reconcile_seconds)
    app.worker_main(
        [
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


if __name__ == "__main__":
    main()
