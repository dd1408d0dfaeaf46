"""A transformers Trainer configured from the job spec, and the callback that reports to the job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from peft import PeftModel
from transformers import (
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from loraq.spec import ResolvedHyperparameters
from worker.training.data import PaddingCollator, TokenizedDataset

if TYPE_CHECKING:
    from worker.training.run import Reporter

# HF's "constant" ignores warmup; "constant_with_warmup" with zero warmup is the same as "constant".
_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


class ReporterBridge(TrainerCallback):
    """Forwards the Trainer's logs, checkpoints and stop checks to a Reporter."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.stopped = False
        self.losses: dict[str, float] = {}  # the latest "train_loss" and "eval_loss"
        self.last_eval_step: int | None = None
        self._started_at = 0.0
        self._first_step = 0
        self._first_tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A resumed run starts mid-way: speed and ETA count only this run's steps.
        self._started_at = time.monotonic()
        self._first_step = state.global_step
        self._first_tokens = state.num_input_tokens_seen

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.losses["train_loss"] = logs["loss"]
        if "eval_loss" in logs:
            self.losses["eval_loss"] = logs["eval_loss"]
            self.last_eval_step = state.global_step
        # The end-of-run summary (the only log with "train_loss", a whole-run mean) goes to
        # metrics.jsonl, not to an event that would read as one more step.
        if "train_loss" not in logs:
            self.reporter.on_metrics(state.global_step, job_metrics(logs, state))
        self.reporter.on_progress(self.progress(state))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.reporter.should_stop():
            self.stopped = True
            control.should_training_stop = True
            # The job is cancelled or no longer ours: no checkpoint or eval of this step.
            control.should_save = control.should_evaluate = False

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        checkpoint = Path(cast(str, args.output_dir)) / f"checkpoint-{state.global_step}"
        self.reporter.on_checkpoint(state.global_step, checkpoint, job_metrics(self.losses, state))

    def progress(self, state: TrainerState) -> dict[str, Any]:
        """The job's progress object: where training is, how fast it goes, how long it has left."""
        elapsed = time.monotonic() - self._started_at
        steps_done = state.global_step - self._first_step
        tokens_done = state.num_input_tokens_seen - self._first_tokens
        steps_left = state.max_steps - state.global_step
        return {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": state.epoch,
            "train_loss": self.losses.get("train_loss"),
            "eval_loss": self.losses.get("eval_loss"),
            "tokens_per_second": tokens_done / elapsed if elapsed > 0 else None,
            "eta_seconds": steps_left * elapsed / steps_done if steps_done else None,
        }


# The Trainer's log names -> the names OpenAI's metrics events and checkpoints use.
_METRIC_NAMES = {"loss": "train_loss", "eval_loss": "valid_loss"}


def job_metrics(logs: dict[str, float], state: TrainerState) -> dict[str, Any]:
    """A metrics event's data: OpenAI's names for the losses, the Trainer's for the rest."""
    metrics: dict[str, Any] = {_METRIC_NAMES.get(name, name): value for name, value in logs.items()}
    metrics["total_steps"] = state.max_steps
    return metrics


def build_trainer(
    *,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train: TokenizedDataset,
    validation: TokenizedDataset | None,
    hyperparameters: ResolvedHyperparameters,
    seed: int,
    output_dir: Path,
    device: torch.device,
    compute_dtype: torch.dtype,
    bridge: ReporterBridge,
) -> Trainer:
    """A Trainer over the tokenized data, reporting through the bridge."""
    args = training_arguments(
        hyperparameters, seed, output_dir, device, compute_dtype, has_validation=validation is not None
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[bridge],
    )
    # Without tqdm the Trainer prints every log dict to stdout; the bridge already reports them.
    trainer.remove_callback(PrinterCallback)
    return trainer


def training_arguments(
    hp: ResolvedHyperparameters,
    seed: int,
    output_dir: Path,
    device: torch.device,
    compute_dtype: torch.dtype,
    *,
    has_validation: bool,
) -> TrainingArguments:
    """Map the resolved spec onto TrainingArguments."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        num_train_epochs=hp.n_epochs,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=_SCHEDULERS[hp.lr_scheduler],
        warmup_steps=hp.warmup_ratio,  # transformers 5 reads a value below 1 as a ratio of all steps
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        logging_steps=hp.logging_steps,
        logging_first_step=True,
        **checkpoint_and_eval_arguments(hp.save_steps, has_validation=has_validation),
        # Old checkpoints were already handed to on_checkpoint; keeping two bounds the scratch disk.
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        bf16=compute_dtype == torch.bfloat16,
        fp16=compute_dtype == torch.float16,
        use_cpu=device.type == "cpu",
        include_num_input_tokens_seen="non_padding",
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,
    )


def checkpoint_and_eval_arguments(save_steps: int | None, *, has_validation: bool) -> dict[str, Any]:
    """Checkpoint and evaluate every save_steps; without them, at the end of each epoch (as OpenAI does)."""
    if save_steps is None:
        return {"save_strategy": "epoch", "eval_strategy": "epoch" if has_validation else "no"}
    return {
        "save_strategy": "steps",
        "save_steps": save_steps,
        "eval_strategy": "steps" if has_validation else "no",
        "eval_steps": save_steps,
    }
