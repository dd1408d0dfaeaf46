"""The bridge from a training run to the job's record: progress, metrics events, checkpoints."""

from __future__ import annotations

import logging
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from loraq.core.db import after_commit, session_scope
from loraq.core.settings import get_settings
from loraq.files import service as files_service
from loraq.jobs import runs
from loraq.jobs.states import Lease
from loraq.projects.service import check_storage
from loraq.storage.archives import pack_dir
from loraq.storage.stores import ArtifactStore, new_storage_key
from worker.heartbeat import Heartbeat
from worker.report_writer import ReportWriter
from worker.training.contracts import TrainingStopped

log = logging.getLogger(__name__)

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
    """Implements worker.training's Reporter for one leased job.

    Each write is recorded only while the lease still holds the job (see loraq.jobs.runs); a
    refused write means the job was cancelled or taken over, and stops the run at once.
    """

    def __init__(
        self,
        lease: Lease,
        heartbeat: Heartbeat,
        writer: ReportWriter,
        store: ArtifactStore,
        *,
        project_id: str,
        scratch: Path,
        keep_bundles: int,
    ) -> None:
        self.lease = lease
        self.keep_bundles = keep_bundles  # save_total_limit: checkpoints whose adapter stays downloadable
        self.heartbeat = heartbeat
        self.writer = writer  # progress and metrics go through it, batched, off the training thread
        self.store = store
        self.project_id = project_id
        self.scratch = scratch  # the job's own scratch space: a killed worker's is found and removed
        self.progress: dict[str, Any] = {}

    def on_progress(self, progress: dict[str, Any]) -> None:
        self._check(not self.writer.refused.is_set())
        self.writer.progress(progress)
        self.progress = progress

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self._check(not self.writer.refused.is_set())
        self.writer.metrics(step, metrics)
        losses = "".join(
            f", {name} {metrics[name]:.4f}" for name in ("train_loss", "valid_loss") if name in metrics
        )
        speed = self.progress.get("tokens_per_second")
        log.info(
            "job %s step %d/%s%s%s",
            self.lease.job_id,
            step,
            metrics.get("total_steps", "?"),
            losses,
            f", {speed:.0f} tokens/s" if speed is not None else "",
        )

    def on_baseline(self, evaluation: dict[str, Any] | None, base_samples: list[dict[str, Any]]) -> None:
        self._check(self.writer.flush())
        with session_scope() as session:
            self._check(
                runs.record_baseline(session, self.lease, evaluation=evaluation, base_samples=base_samples)
            )
        if evaluation is not None:
            log.info("job %s base model valid_loss %.4f", self.lease.job_id, evaluation["base_valid_loss"])

    def on_evaluation(
        self, step: int, evaluation: dict[str, Any] | None, samples: list[dict[str, Any]]
    ) -> None:
        self._check(self.writer.flush())  # the steps before this evaluation are on record first
        with session_scope() as session:
            self._check(
                runs.record_evaluation(session, self.lease, step=step, evaluation=evaluation, samples=samples)
            )

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        """Store the whole checkpoint (to resume from) and its adapter alone (to download)."""
        self._check(self.writer.flush())  # a resume from here finds every step up to it recorded
        resume_key = new_storage_key("checkpoints", ".tar.gz")
        with tempfile.TemporaryDirectory(prefix="checkpoint-", dir=self.scratch) as scratch_dir:
            scratch = Path(scratch_dir)
            resume = pack_dir(path, scratch / "resume.tar.gz")
            resume_bytes = resume.stat().st_size
            self.store.put_file(resume_key, resume, move=True)
            try:
                adapter = scratch / "adapter"
                adapter.mkdir()
                for name in CHECKPOINT_ADAPTER_FILES:
                    if (path / name).is_file():
                        shutil.copyfile(path / name, adapter / name)
                bundle = scratch / f"{self.lease.job_id}-step-{step}-adapter.tar.gz"
                pack_dir(adapter, bundle)
                # A refusal rolls back, which deletes the adapter bundle's blob too.
                with session_scope() as session:
                    # Both count against the project's storage, under its lock until this commits.
                    check_storage(
                        session,
                        project_id=self.project_id,
                        adding_bytes=resume_bytes + bundle.stat().st_size,
                        settings=get_settings(),
                    )
                    result = files_service.create_result_file(
                        session,
                        project_id=self.project_id,
                        filename=bundle.name,
                        source=bundle,
                        store=self.store,
                        settings=get_settings(),
                    )
                    stale = runs.add_checkpoint(
                        session,
                        self.lease,
                        step=step,
                        metrics=metrics,
                        storage_key=resume_key,
                        resume_bytes=resume_bytes,
                        result_file=result.id,
                        keep_bundles=self.keep_bundles,
                    )
                    self._check(stale is not None)
                    for key in stale or []:
                        after_commit(session, partial(self.store.delete, key))
            except BaseException:
                self.store.delete(resume_key)
                raise
        log.info("job %s checkpoint saved at step %d", self.lease.job_id, step)

    def should_stop(self) -> bool:
        return not self.heartbeat.still_ours() or self.writer.refused.is_set()

    def _check(self, recorded: bool) -> None:
        """Stop the run when a write was refused: the job is no longer this worker's."""
        if not recorded:
            self.heartbeat.lost.set()
            raise TrainingStopped("the job stopped being ours; nothing more is recorded")
