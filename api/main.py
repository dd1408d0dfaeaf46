"""`loraq-api`: migrate the database, make the first admin key, serve HTTP."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.serving import serve_in_processes
from loraq.core.db import session_scope
from loraq.core.logs import configure_logging
from loraq.core.migrate import upgrade_to_head
from loraq.core.processes import stop_with_parent
from loraq.core.settings import get_settings
from loraq.projects.keys import ensure_admin_key
from loraq.storage.scratch import remove_stale_scratch

log = logging.getLogger("loraq.api")

# Not a setting (no LORAQ_ prefix): how `main` tells the serving processes which process started them.
SUPERVISOR_PID = "_LORAQ_API_SUPERVISOR_PID"


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    upgrade_to_head()
    remove_stale_scratch(settings.scratch_dir)  # upload spools of an API process that was killed
    with session_scope() as session:
        new_key = ensure_admin_key(session, settings.admin_key_path)
    if new_key:
        log.info("created the first admin API key in %s", settings.admin_key_path.resolve())
    port = int(os.environ.get("PORT", settings.port))
    log.info("loraq API on http://%s:%s  (admin key: %s)", settings.host, port, settings.admin_key_path)
    # log_config=None: uvicorn keeps the handlers configure_logging installed (plain or JSON lines).
    # httptools and uvloop named, not left to "auto": a missing one fails the start instead of quietly
    # serving at a fraction of the throughput under load (docs/benchmarks.md).
    options: dict[str, Any] = {
        "app": "api.main:create_served_app",
        "factory": True,
        "host": settings.host,
        "port": port,
        "log_level": "info",
        "log_config": None,
        "access_log": settings.access_log,
        "http": "httptools",
        "loop": "uvloop",
    }
    workers = settings.api_processes
    if workers == 1:
        uvicorn.run(**options)
        return
    # The API keeps no state of its own: each process has its threads, its pool and its own socket.
    log.info("%d API processes, each running %d requests at once", workers, settings.api_concurrency)
    os.environ[SUPERVISOR_PID] = str(os.getpid())  # for the serving processes, started next
    sys.exit(serve_in_processes(workers, settings.host, port, options))


def create_served_app() -> FastAPI:
    """The app as each serving process builds it. With LORAQ_API_WORKERS above 1 they are spawned, not
    forked (api/serving.py): they begin with Python's default logging, which would drop their access log
    and INFO lines and ignore LORAQ_LOG_FORMAT. And they would outlive a supervisor killed alone (SIGKILL,
    the OOM killer), serving on without it and holding its port against a restart."""
    configure_logging(get_settings())
    supervisor = int(os.environ.get(SUPERVISOR_PID, os.getpid()))
    if supervisor != os.getpid():
        stop_with_parent(supervisor, name="this API process")
    return create_app()


if __name__ == "__main__":
    main()
