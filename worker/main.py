"""`loraq-worker`: make sure the built-in base models exist, then run the training worker, the chat process
(worker/chat_worker.py, a Celery worker of its own on the `chat` queue) and the reconciler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import after_setup_task_logger

from loraq.base_models.catalog import DEMO_MODEL_NAME, SMOLLM2_MODEL_NAME
from loraq.core.broker import JOBS_QUEUE
from loraq.core.logs import configure_logging
from loraq.core.settings import get_settings

log = logging.getLogger(__name__)


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
    if not (settings.models_dir / SMOLLM2_MODEL_NAME / "config.json").exists():
        subprocess.run([sys.executable, "-m", "worker.smollm2", str(settings.models_dir)], check=True)

    from loraq.storage.scratch import remove_stale_scratch
    from worker.celery_app import app
    from worker.reconciler import start_reconciler
    from worker.registration import start_registration
    from worker.webhooks import start_webhook_sender

    # Before the pool forks: the scratch dirs that killed workers of this host left go now.
    remove_stale_scratch(settings.scratch_dir)
    start_registration(interval=settings.heartbeat_seconds)
    start_reconciler(
        interval=settings.reconcile_seconds,
        delivery_retention_days=settings.webhook_delivery_retention_days,
    )
    start_webhook_sender(settings)
    stopping = threading.Event()
    threading.Thread(target=_run_chat_process, args=(stopping,), daemon=True).start()
    if settings.worker_preload and not _has_nvidia_device():
        _preload_training_stack()
    try:
        _run_training_worker(app, json_logs=settings.log_format == "json")
    finally:
        stopping.set()
        _stop_chat_process()


def _preload_training_stack() -> None:
    """Import the training code once, so that each job's freshly forked child starts with it loaded.

    Importing runs no tensor operation, so no OpenMP or CUDA state exists yet to be copied by the
    fork (a forked copy of a live thread pool can hang; a CUDA context cannot be forked at all).
    """
    started = time.monotonic()
    import worker.reporting
    import worker.training  # noqa: F401

    log.info("training stack imported in %.1fs; each job's child starts with it", time.monotonic() - started)


def _has_nvidia_device() -> bool:
    """An NVIDIA driver is loaded: then importing bitsandbytes would create a CUDA context in this
    process, which no forked child could use, so the training stack is not preloaded there."""
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidia0").exists()


def _run_training_worker(app: Any, *, json_logs: bool) -> None:
    app.worker_main(
        [
            # Celery's banner is printed, not logged: it would break a log of JSON lines.
            *(["--quiet"] if json_logs else []),
            "worker",
            "--loglevel=INFO",
            "--pool=prefork",
            "--concurrency=1",
            # Training jobs only: chats are the chat process's, so none waits behind a job.
            f"--queues={JOBS_QUEUE}",
            # Mingle and gossip talk between workers over broadcast; the filesystem broker has none.
            "--without-mingle",
            "--without-gossip",
            *sys.argv[1:],
        ]
    )


_chat: list[subprocess.Popen[bytes]] = []
# A chat process that keeps dying at once (a broken broker folder) is restarted less and less often.
CHAT_RESTART_PAUSE_SECONDS = (2, 5, 10, 30, 60)
CHAT_HEALTHY_RUN_SECONDS = 60


def _run_chat_process(stopping: threading.Event) -> None:
    """Run the chat process, and again whenever it exits, until this worker stops."""
    command = [sys.executable, "-c", "from worker.chat_worker import main; main()", str(os.getpid())]
    failures = 0
    while not stopping.is_set():
        started = time.monotonic()
        process = subprocess.Popen(command)  # same process group: a kill of the worker's group reaches it
        _chat[:] = [process]
        code = process.wait()
        if stopping.is_set():
            return
        failures = 0 if time.monotonic() - started > CHAT_HEALTHY_RUN_SECONDS else failures + 1
        pause = CHAT_RESTART_PAUSE_SECONDS[min(failures, len(CHAT_RESTART_PAUSE_SECONDS) - 1)]
        log.warning("the chat process exited with %s; restarting it in %ds", code, pause)
        stopping.wait(pause)


def _stop_chat_process() -> None:
    for process in _chat:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@after_setup_task_logger.connect
def _one_format_for_celery(**_kwargs: Any) -> None:
    """Celery gives its task and pool loggers handlers of its own format: send their records to ours."""
    for name in ("celery.task", "multiprocessing"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


if __name__ == "__main__":
    main()
