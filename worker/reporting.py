"""The bridge from a training run to the job's record: progress, metrics events, checkpoints."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from loraq import files, lifecycle
from loraq.db import session_scope
from loraq.lifecycle import Lease
from loraq.storage import ArtifactStore, new_storage_key
from worker.heartbeat import Heartbeat
from worker.training.export import pack_bundle

# What of a Trainer checkpoint makes a loadable adapter; the rest (optimizer, scheduler and RNG
# state, pickled training args) is only for resuming and never leaves the worker's side.
CHECKPOINT_ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "trainer_state.json",
)


class JobReporter:
    """Implements worker.training's Reporter for one leased job."""

    def __init__(self, lease: Lease, heartbeat: Heartbeat, store: ArtifactStore, *, project_id: str) -> None:
        self.lease = lease
        self.heartbeat = heartbeat
        self.store = store
        self.project_id = project_id

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
        """Store the whole checkpoint (to resume from) and its adapter alone (to download)."""
        resume_key = new_storage_key("checkpoints", ".tar.gz")
        with tempfile.TemporaryDirectory(prefix="loraq-ckpt-") as scratch_dir:
            scratch = Path(scratch_dir)
            pack_bundle(path, scratch / "resume.tar.gz")
            self.store.put_file(resume_key, scratch / "resume.tar.gz")
            adapter = scratch / "adapter"
            adapter.mkdir()
            for name in CHECKPOINT_ADAPTER_FILES:
                if (path / name).is_file():
                    shutil.copyfile(path / name, adapter / name)
            bundle = scratch / f"{self.lease.job_id}-step-{step}-adapter.tar.gz"
            pack_bundle(adapter, bundle)
            with session_scope() as session:
                result = files.create_result_file(
                    session, project_id=self.project_id, filename=bundle.name, source=bundle, store=self.store
                )
                lifecycle.add_checkpoint(
                    session,
                    self.lease,
                    step=step,
                    metrics=metrics,
                    storage_key=resume_key,
                    result_file=result.id,
                )
                lifecycle.add_event(
                    session,
                    self.lease.job_id,
                    f"Checkpoint saved at step {step}",
                    data={"step": step, "result_file": result.id},
                )

    def should_stop(self) -> bool:
        return not self.heartbeat.still_ours()
