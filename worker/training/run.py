"""Train one adapter, top to bottom: data → model → trainer → export."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from transformers import Trainer, set_seed

from loraq.spec import AdapterSpec, ResolvedHyperparameters
from worker.training.data import TokenizedDataset, load_dataset, load_tokenizer
from worker.training.export import export_bundle
from worker.training.model import load_model, pick_device
from worker.training.trainer import ReporterBridge, build_trainer


@dataclass
class TrainingRequest:
    base_model_path: Path
    base_model_name: str
    train_path: Path  # validated JSONL
    dataset_format: str  # "chat" | "prompt_completion" | "text"
    validation_path: Path | None
    output_dir: Path  # scratch dir, worker-owned
    hyperparameters: ResolvedHyperparameters
    adapter: AdapterSpec
    seed: int
    resume_from: Path | None = None  # a checkpoint dir previously given to on_checkpoint


class Reporter(Protocol):
    """Where training reports to; the Celery task records it on the job."""

    def on_progress(self, progress: dict[str, Any]) -> None: ...

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        """A complete checkpoint; later checkpoints may delete it, so copy it during the call."""
        ...

    def should_stop(self) -> bool: ...


class TrainingStopped(Exception):
    """should_stop() said stop (cancelled or lease lost)."""


@dataclass
class TrainingOutcome:
    bundle_dir: Path  # the exported adapter dir (all bundle files)
    trained_tokens: int
    steps: int
    metrics: dict[str, Any]  # final train_loss / eval_loss


def train_adapter(request: TrainingRequest, reporter: Reporter) -> TrainingOutcome:
    """Fine-tune a LoRA/QLoRA adapter as the request says, and export its bundle."""
    hp = request.hyperparameters
    set_seed(request.seed)  # before the model: LoRA's initial weights are random too
    device = pick_device()

    tokenizer = load_tokenizer(request.base_model_path, request.dataset_format)
    # Validation is masked as training is, so eval_loss and train_loss measure the same tokens.
    tokenize = partial(
        load_dataset,
        dataset_format=request.dataset_format,
        tokenizer=tokenizer,
        max_seq_len=hp.max_seq_len,
        train_on_inputs=hp.train_on_inputs,
    )
    train = tokenize(request.train_path)
    validation = tokenize(request.validation_path) if request.validation_path else None

    loaded = load_model(request.base_model_path, request.adapter, device)

    bridge = ReporterBridge(reporter)
    trainer = build_trainer(
        model=loaded.model,
        tokenizer=tokenizer,
        train=train,
        validation=validation,
        hyperparameters=hp,
        seed=request.seed,
        output_dir=request.output_dir / "checkpoints",
        device=device,
        compute_dtype=loaded.compute_dtype,
        bridge=bridge,
    )
    trainer.train(resume_from_checkpoint=str(request.resume_from) if request.resume_from else None)
    if bridge.stopped:
        raise TrainingStopped(f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps}")
    metrics = final_metrics(trainer, bridge, validation)

    bundle_dir = export_bundle(
        request.output_dir / "adapter",
        request,
        model=loaded.model,
        tokenizer=tokenizer,
        state=trainer.state,
        base_description=loaded.base_description,
        data_stats=train.stats(),
        metrics=metrics,
        device=device,
    )
    return TrainingOutcome(
        bundle_dir=bundle_dir,
        trained_tokens=trainer.state.num_input_tokens_seen,
        steps=trainer.state.global_step,
        metrics=metrics,
    )


def final_metrics(
    trainer: Trainer, bridge: ReporterBridge, validation: TokenizedDataset | None
) -> dict[str, Any]:
    """The last train loss and an eval loss of the final weights (evaluating once more if needed)."""
    if validation is not None and bridge.last_eval_step != trainer.state.global_step:
        trainer.evaluate()  # its eval_loss reaches the bridge through on_log
    return dict(bridge.losses)
