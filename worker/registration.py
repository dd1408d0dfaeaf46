"""Register this worker and heartbeat from its main process, so the API can tell whether any worker lives."""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid

from loraq.core.db import session_scope
from loraq.workers import service

log = logging.getLogger(__name__)


def probe_device() -> dict[str, str]:
    """The device and "auto" compute dtype, asked of a child so this process never imports torch."""
    result = subprocess.run([sys.executable, "-m", "worker.device"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"could not probe this worker's device:\n{result.stderr.strip()}")
    probed: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return probed


def start_registration(*, interval: float) -> str:
    """Register now, then heartbeat every `interval` seconds from a daemon thread; returns the worker id."""
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    device = probe_device()
    with session_scope() as session:
        service.register(
            session,
            worker_id=worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            device=device["device"],
            compute_dtype=device["compute_dtype"],
        )
    log.info("worker %s registered: trains on %s", worker_id, device["device"])

    def beat_forever() -> None:
        while True:
            try:
                with session_scope() as session:
                    service.beat(session, worker_id=worker_id)
            except Exception:
                log.warning("could not record this worker's heartbeat; retrying", exc_info=True)
            threading.Event().wait(interval)

    threading.Thread(target=beat_forever, name="loraq-worker-heartbeat", daemon=True).start()
    atexit.register(_say_stopped, worker_id, os.getpid())
    return worker_id


def _say_stopped(worker_id: str, pid: int) -> None:
    # A clean exit says so at once; a killed worker is noticed when its heartbeats stop.
    if os.getpid() != pid:
        return  # a forked pool child inherits atexit hooks; only the registered process speaks for it
    try:
        with session_scope() as session:
            service.stopped(session, worker_id=worker_id)
    except Exception:
        log.warning("could not record that worker %s stopped", worker_id, exc_info=True)
