"""`make serve`: prepare the database and base models, then run the API and a supervised worker.

The API starts only once a job can be created: migrations ran and the base models exist, so the
models are listed by the time the "loraq API on ..." line prints. The worker is restarted whenever
it exits (killed, out of memory), with a growing pause if it keeps dying at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

BIN = Path(sys.executable).parent
RESTART_PAUSE_SECONDS = (1, 2, 5, 10, 30)
# A worker that ran this long before exiting was healthy: its next restart pauses the least.
HEALTHY_RUN_SECONDS = 60

stopping = threading.Event()
# How the API ends when it is stopped: cleanly, or by the signal uvicorn re-raises after its shutdown.
STOPPED_BY_SIGNAL = {0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP}


def prepare() -> None:
    """Migrate the database and build the base models (demo, SmolLM2), each once; all are idempotent."""
    subprocess.run(
        [sys.executable, "-c", "from loraq.core.migrate import upgrade_to_head; upgrade_to_head()"],
        check=True,
    )
    subprocess.run([sys.executable, "-c", _ENSURE_MODELS], check=True)


_ENSURE_MODELS = """
from loraq.core.settings import get_settings
from worker.demo_model import ensure_demo_model
from worker.smollm2 import ensure_smollm2
ensure_demo_model(get_settings().models_dir)
ensure_smollm2(get_settings().models_dir)
"""


def supervise_worker(current: list[subprocess.Popen[bytes]]) -> None:
    """Run `loraq-worker`, and run it again whenever it exits, until we are stopping."""
    failures = 0
    while not stopping.is_set():
        started = time.monotonic()
        worker = subprocess.Popen([str(BIN / "loraq-worker")], start_new_session=True)
        current[:] = [worker]
        code = worker.wait()
        if stopping.is_set():
            return
        failures = 0 if time.monotonic() - started > HEALTHY_RUN_SECONDS else failures + 1
        pause = RESTART_PAUSE_SECONDS[min(failures, len(RESTART_PAUSE_SECONDS) - 1)]
        print(f"loraq-worker exited with {code}; restarting it in {pause}s", file=sys.stderr, flush=True)
        stopping.wait(pause)


def main() -> int:
    prepare()
    workers: list[subprocess.Popen[bytes]] = []
    supervisor = threading.Thread(target=supervise_worker, args=(workers,), daemon=True)
    supervisor.start()
    api = subprocess.Popen([str(BIN / "loraq-api")])

    asked_to_stop: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Nothing that takes a lock: a second signal (kill of the whole group, then Ctrl-C) can land while
        # the first handler holds it, and the process would wait on itself forever.
        asked_to_stop.append(signum)
        api.terminate()

    # SIGHUP: the terminal closed. It reaches the API, in this process group, but not the worker, in a
    # session of its own (so that a kill of its group reaches Celery's children): unstopped, it would run
    # on, orphaned, beside the worker of the next `make serve`.
    for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(each, stop)
    code = api.wait()
    stopping.set()  # the API is gone: the supervisor restarts no more workers
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()  # Celery's warm shutdown stops its pool children too
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    # Asked to stop, the API ending by the signal it was sent is a clean stop: 0, not its -15 (which make
    # reports as "Error 241" after a `kill` or a service manager's stop).
    return 0 if asked_to_stop and code in STOPPED_BY_SIGNAL else code


if __name__ == "__main__":
    sys.exit(main())
