"""The chat process `loraq-worker` runs beside its training worker: a Celery worker on the `chat` queue.

One process, one task at a time (solo pool), never recycled: the models it loaded stay loaded between
requests. It answers chats while the training worker's child runs a job, on the same machine.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from functools import cache
from typing import Any

from loraq.chat import repository
from loraq.core.broker import CHAT_QUEUE, CHAT_TASK, get_celery
from loraq.core.db import session_scope
from loraq.core.errors import LoraqError
from loraq.core.logs import configure_logging
from loraq.core.processes import stop_with_parent
from loraq.core.settings import get_settings
from loraq.storage.stores import get_store

log = logging.getLogger(__name__)

app = get_celery()
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


@cache
def _models() -> Any:
    from worker.chat import ChatModels

    return ChatModels(get_settings(), get_store())


# Acked on receipt: a chat that killed its process is not worth a second try, its caller has given up.
@app.task(name=CHAT_TASK, acks_late=False, ignore_result=True)
def chat_completion(request_id: str) -> None:
    """Answer one stored chat request, unless the API gave up on it or another process took it."""
    from worker.chat import ChatJob

    with session_scope() as session:
        row = repository.claim(session, request_id)
        if row is None:
            return
        job = ChatJob(row.base_model, row.adapter_id, row.adapter_key, row.generation)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    models = _models()
    try:
        answer = models.answer(job)
        loads = {"base_loads": models.base_loads, "adapter_loads": models.adapter_loads}
        result = {**vars(answer), "loraq": {"worker": WORKER_NAME, **loads}}
    except LoraqError as refused:
        error = {
            "status": refused.status_code,
            "type": refused.type,
            "message": refused.message,
            "param": refused.param,
            "code": refused.code,
        }
    except Exception as failure:
        log.exception("chat request %s failed", request_id)
        error = {"status": 500, "type": "server_error", "message": f"the chat failed: {failure}"}
    with session_scope() as session:
        repository.finish(session, request_id, result=result, error=error)


def main() -> None:
    """Run the chat worker; its one argument is the pid of the `loraq-worker` it belongs to."""
    settings = get_settings()
    configure_logging(settings)
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)  # no line per answered chat
    stop_with_parent(int(sys.argv[-1]), name="the chat process")  # its loraq-worker's pid
    # Never recycled (the training worker's children are, after each job): loaded models stay loaded.
    app.conf.worker_max_tasks_per_child = None
    app.worker_main(
        [
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            "--loglevel=INFO",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={CHAT_QUEUE}",
            "--hostname=chat@%h",
            "--without-mingle",
            "--without-gossip",
        ]
    )
