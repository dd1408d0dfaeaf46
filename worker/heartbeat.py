"""Renew a job's lease in the background while it trains; notice when the job stops being ours."""

from __future__ import annotations

import logging
import threading
import time

from loraq.core.db import session_scope
from loraq.core.logs import job_logging
from loraq.jobs import runs
from loraq.jobs.states import Lease

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that renews the lease every `interval` seconds until stopped."""

    def __init__(self, lease: Lease, *, interval: float, lease_seconds: float) -> None:
        self.lease = lease
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lease.job_id}", daemon=True)
        self._last_check = 0.0

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        with job_logging(self.lease.job_id):  # a new thread starts without the task's context
            while not self._stop.wait(self.interval):
                self.beat()

    def beat(self) -> None:
        try:
            with session_scope() as session:
                if not runs.renew(session, self.lease, lease_seconds=self.lease_seconds):
                    self.lost.set()
        except Exception:
            # The database is unreachable: keep training; if the lease expires meanwhile,
            # the next renewal fails and the run stops without writing results.
            log.warning("could not renew the lease of %s", self.lease.job_id, exc_info=True)

    def still_ours(self, *, at_most_every: float = 1.0) -> bool:
        """Cheap enough to call every training step: asks the database at most once a second."""
        now = time.monotonic()
        if not self.lost.is_set() and now - self._last_check >= at_most_every:
            self._last_check = now
            try:
                with session_scope() as session:
                    if not runs.holds(session, self.lease):
                        self.lost.set()
            except Exception:
                log.warning("could not check the lease of %s", self.lease.job_id, exc_info=True)
        return not self.lost.is_set()
