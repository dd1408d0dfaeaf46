"""Helper processes that must not outlive the process that started them."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)


def stop_with_parent(parent: int, *, name: str) -> None:
    """Stop this process, as SIGTERM would, once `parent` is gone.

    A process killed alone (by a supervisor that signals only its pid, by SIGKILL, by the OOM killer)
    leaves its children running, re-parented; and a parent that re-raises SIGTERM after its own clean
    shutdown, as uvicorn does, dies before it has told them to stop. Checked once a second, in a daemon
    thread. Pass the pid the parent gave, not os.getppid(): a parent killed while this process was
    starting is gone already.
    """
    threading.Thread(target=_watch, args=(parent, name), name="stop-with-parent", daemon=True).start()


def _watch(parent: int, name: str) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    log.warning("process %d, which started %s, is gone; %s stops too", parent, name, name)
    os.kill(os.getpid(), signal.SIGTERM)
