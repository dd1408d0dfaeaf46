"""A job's progress and metrics, written to the database from a thread of their own, in batches.

Two commits per training step cost a few milliseconds each (more on a remote database), on the
training thread. Here the step only hands its numbers over: the writer keeps the latest progress
and every metrics point, and commits them together at most once per interval. A checkpoint, the
run's end and a stop flush what is pending first, so the record never skips a step.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from loraq.core.db import session_scope
from loraq.jobs import runs
from loraq.jobs.states import Lease

log = logging.getLogger(__name__)


class ReportWriter:
    """Batches one leased job's progress (the latest wins) and metrics (each kept, in order)."""

    def __init__(self, lease: Lease, *, interval: float) -> None:
        self.lease = lease
        self.interval = interval
        # Set once a write was refused: the job was cancelled or taken over.
        self.refused = threading.Event()
        self._pending_lock = threading.Lock()
        self._progress: dict[str, Any] | None = None
        self._metrics: list[tuple[int, dict[str, Any]]] = []
        # Held while a batch is written: batches reach the database in the order they were taken.
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"report-writer-{lease.job_id}", daemon=True)

    def __enter__(self) -> ReportWriter:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._closing.set()
        self._thread.join()
        self.flush()  # a clean stop loses nothing: the last step's numbers are written now

    def progress(self, progress: dict[str, Any]) -> None:
        with self._pending_lock:
            self._progress = progress

    def metrics(self, step: int, metrics: dict[str, Any]) -> None:
        with self._pending_lock:
            self._metrics.append((step, metrics))

    def flush(self) -> bool:
        """Write what is pending now; False when the lease refused it (the job is no longer ours)."""
        with self._write_lock:
            with self._pending_lock:
                progress, metrics = self._progress, self._metrics
                self._progress, self._metrics = None, []
            if progress is None and not metrics:
                return not self.refused.is_set()
            try:
                with session_scope() as session:
                    recorded = runs.record_reports(session, self.lease, progress=progress, metrics=metrics)
            except (DataError, IntegrityError):
                # The database refuses these values, and would again: kept, the batch would hold back every
                # later step's numbers for the rest of the run.
                log.error(
                    "job %s: the database refused a batch of reports (steps %s); it is dropped",
                    self.lease.job_id,
                    [step for step, _ in metrics],
                    exc_info=True,
                )
                return not self.refused.is_set()
            except SQLAlchemyError:
                self._put_back(progress, metrics)
                raise
            if not recorded:
                self.refused.set()
            return recorded

    def _put_back(self, progress: dict[str, Any] | None, metrics: list[tuple[int, dict[str, Any]]]) -> None:
        """Keep a batch the database did not take, ahead of anything newer, for the next try."""
        with self._pending_lock:
            self._progress = self._progress or progress
            self._metrics = metrics + self._metrics

    def _run(self) -> None:
        while not self._closing.wait(self.interval):
            try:
                self.flush()
            except SQLAlchemyError:
                # Kept for the next flush; an outage long enough to matter also stops the lease's renewal.
                log.warning("job %s: could not record progress; will retry", self.lease.job_id, exc_info=True)
