"""The bridge from a training run to the job's record: progress, metrics events, checkpoints."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from loraq import lifecycle
from loraq.db import session_scope
from loraq.lifecycle import Lease
from loraq.storage import ArtifactStore, new_storage_key
from worker.heartbeat import Heartbeat
from worker.training.export import pack_bundle


class JobReporter:
    """Implements worker.training's Reporter for one leased job."""

    def __init__(self, lease: Lease, heartbeat: Heartbeat, store: ArtifactStore) -> None:
        self.lease = lease
        self.heartbeat = heartbeat
        self.store = store

    def on_progress(self, progress: dict[str, Any]) -> None:
        with session_scope() as session:
            lifecycle.record_progress(session, self.lease, progress)

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        shown = ", ".join(
            f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in metrics.items()
        )
        with session_scope() as session:
            lifecycle.add_event(
                session,
                self.lease.job_id,
                f"Step {step}: {shown}",
                type="metrics",
                data={"step": step, **metrics},
            )

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        key = new_storage_key("checkpoints", ".tar.gz")
        with tempfile.TemporaryDirectory(prefix="loraq-ckpt-") as scratch:
            archive = Path(scratch) / "checkpoint.tar.gz"
            pack_bundle(path, archive)
            self.store.put_file(key, archive)
        with session_scope() as session:
            lifecycle.add_checkpoint(session, self.lease, step=step, metrics=metrics, storage_key=key)
            lifecycle.add_event(session, self.lease.job_id, f"Checkpoint saved at step {step}")

    def should_stop(self) -> bool:
        return not self.heartbeat.still_ours()
