"""The types the training stages share: what a run is asked, how it reports, what it returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loraq.jobs.spec import AdapterSpec, ResolvedHyperparameters


@dataclass
class TrainingRequest:
    base_model_path: Path
    base_model_name: str
    train_path: Path  # validated JSONL
    dataset_format: str  # "chat" | "prompt_completion" | "text"
    validation_path: Path | None  # None: hyperparameters.validation_split, if set, holds some out
    output_dir: Path  # scratch dir, worker-owned
    hyperparameters: ResolvedHyperparameters
    adapter: AdapterSpec
    seed: int
    resume_from: Path | None = None  # a checkpoint dir previously given to on_checkpoint
    merged: bool = False  # also export the base with the adapter merged in (JobCreate.export.merged)
    # Continued training: the adapter bundle to start from, and the ft: model it is.
    initial_adapter: Path | None = None
    continues: str | None = None
    # Inputs to answer with the base and the tuned model (JobCreate.samples); None: the first validation ones.
    samples: list[dict[str, Any]] | None = None
    sample_max_new_tokens: int = 64
    # What an earlier attempt of the job recorded: the base is not measured again when base_samples is set.
    evaluation: dict[str, Any] | None = None
    base_samples: list[dict[str, Any]] | None = None
    # Where the base model's file hashes are remembered between jobs; None: hashed afresh each time.
    hash_cache_dir: Path | None = None


class Reporter(Protocol):
    """Where training reports to; the Celery task records it on the job."""

    def on_progress(self, progress: dict[str, Any]) -> None: ...

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        """A complete checkpoint; later checkpoints may delete it, so copy it during the call."""
        ...

    def on_baseline(self, evaluation: dict[str, Any] | None, base_samples: list[dict[str, Any]]) -> None:
        """The base model's valid loss (None without validation data) and answers, before step 1."""
        ...

    def on_evaluation(
        self, step: int, evaluation: dict[str, Any] | None, samples: list[dict[str, Any]]
    ) -> None:
        """The evaluation after the tuned adapter's evaluation at `step`, and its answers to the samples."""
        ...

    def should_stop(self) -> bool: ...


class TrainingStopped(Exception):
    """should_stop() said stop (cancelled or lease lost)."""


@dataclass
class TrainingOutcome:
    bundle_dir: Path  # the exported adapter dir (all bundle files)
    trained_tokens: int
    merged_dir: Path | None = None  # the merged model's dir (safetensors + tokenizer), if asked
