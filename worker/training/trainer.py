"""A transformers Trainer configured from the job spec, and the callback that reports to the job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from peft import PeftModel
from torch import nn
from transformers import (
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from loraq.jobs.spec import ResolvedHyperparameters
from worker.training.data import IGNORE_INDEX, TrainingData, data_collator

if TYPE_CHECKING:
    from worker.training.contracts import Reporter

# HF's "constant" ignores warmup; "constant_with_warmup" with zero warmup is the same as "constant".
_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}

# The job's progress is refreshed at least this often, even when a log step or an evaluation is slow.
PROGRESS_INTERVAL_SECONDS = 5.0

# The Trainer's log names -> the names the bridge keeps the latest value under.
_LATEST = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "train_mean_token_accuracy": "train_mean_token_accuracy",
    "eval_mean_token_accuracy": "eval_mean_token_accuracy",
}


class ReporterBridge(TrainerCallback):
    """Forwards the Trainer's logs, checkpoints and stop checks to a Reporter."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.stopped = False
        self.latest: dict[str, float] = {}  # the latest value of each name in _LATEST
        self.last_eval_step: int | None = None
        self._started_at = 0.0
        self._first_step = 0
        self._first_tokens = 0
        self._last_progress_at = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A resumed run starts mid-way: speed and ETA count only this run's steps.
        self._started_at = time.monotonic()
        self._first_step = state.global_step
        self._first_tokens = state.num_input_tokens_seen
        self._report_progress(state)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        self.latest |= {kept: logs[name] for name, kept in _LATEST.items() if name in logs}
        if "eval_loss" in logs:
            self.last_eval_step = state.global_step
        # Progress first: the reporter's line for this step quotes its speed.
        self._report_progress(state)
        # The end-of-run summary (the only log with "train_loss", a whole-run mean) goes to
        # metrics.jsonl, not to an event that would read as one more step.
        if "train_loss" not in logs:
            self.reporter.on_metrics(state.global_step, job_metrics(logs, state))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.reporter.should_stop():
            self.stopped = True
            control.should_training_stop = True
        self._stay_quiet_once_stopped(control)
        if not self.stopped:
            self._report_progress_if_due(state)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Stopping mid-epoch still ends the epoch, where the Trainer would save with save_strategy "epoch".
        self._stay_quiet_once_stopped(control)

    def _stay_quiet_once_stopped(self, control: TrainerControl) -> None:
        """The job is cancelled or no longer ours: no log, eval or checkpoint of this step."""
        if self.stopped:
            control.should_log = control.should_save = control.should_evaluate = False

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._report_progress_if_due(state)  # a step of many accumulated batches can be long

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._report_progress_if_due(state)  # so can an evaluation

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        checkpoint = Path(cast(str, args.output_dir)) / f"checkpoint-{state.global_step}"
        self.reporter.on_checkpoint(state.global_step, checkpoint, job_metrics(self.latest, state))

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
            "train_loss": self.latest.get("train_loss"),
            "valid_loss": self.latest.get("eval_loss"),
            "tokens_per_second": tokens_done / elapsed if elapsed > 0 else None,
            "eta_seconds": steps_left * elapsed / steps_done if steps_done else None,
            # When these numbers were true: the job's estimated_finish is this plus eta_seconds.
            "reported_at": time.time(),
        }

    def refresh_progress(self, state: TrainerState) -> None:
        """Report progress if due: for long work between the Trainer's own callbacks (sample answers)."""
        self._report_progress_if_due(state)

    def _report_progress(self, state: TrainerState) -> None:
        self._last_progress_at = time.monotonic()
        self.reporter.on_progress(self.progress(state))

    def _report_progress_if_due(self, state: TrainerState) -> None:
        if time.monotonic() - self._last_progress_at >= PROGRESS_INTERVAL_SECONDS:
            self._report_progress(state)


# The Trainer's log names -> the names OpenAI's metrics events and checkpoints use.
_METRIC_NAMES = {
    "loss": "train_loss",
    "eval_loss": "valid_loss",
    "eval_mean_token_accuracy": "valid_mean_token_accuracy",
}


def job_metrics(logs: dict[str, float], state: TrainerState) -> dict[str, Any]:
    """A metrics event's data: OpenAI's names for the losses, the Trainer's for the rest."""
    metrics: dict[str, Any] = {_METRIC_NAMES.get(name, name): value for name, value in logs.items()}
    metrics["total_steps"] = state.max_steps
    return metrics


class TokenAccuracy:
    """The share of label tokens that the model's most likely next token gets right, batch by batch."""

    def __init__(self) -> None:
        self.correct = torch.zeros((), dtype=torch.long)
        self.counted = torch.zeros((), dtype=torch.long)

    def add(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a batch: the prediction at position t is for the label at t + 1."""
        predicted, labels = predicted[:, :-1], labels[:, 1:]
        counted = labels != IGNORE_INDEX
        # Kept as tensors on the batch's device: no GPU sync per batch.
        self.correct = self.correct.to(labels.device) + (predicted.eq(labels) & counted).sum()
        self.counted = self.counted.to(labels.device) + counted.sum()

    def pop(self) -> float | None:
        """The accuracy since the last pop, then start counting afresh."""
        accuracy = (self.correct / self.counted).item() if self.counted else None
        self.correct, self.counted = torch.zeros_like(self.correct), torch.zeros_like(self.counted)
        return accuracy

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        """The Trainer's compute_metrics, over a whole evaluation (predictions are argmax ids already)."""
        self.add(torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids))
        accuracy = self.pop()
        return {"mean_token_accuracy": accuracy} if accuracy is not None else {}


def most_likely_tokens(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """preprocess_logits_for_metrics: keep the argmax ids, not a vocabulary-wide row per token."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)


class AccuracyTrainer(Trainer):
    """A Trainer that also logs train_mean_token_accuracy over the batches since the last log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_accuracy = TokenAccuracy()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:  # evaluation counts through compute_metrics instead
            self.train_accuracy.add(outputs.logits.detach().argmax(dim=-1), inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and (accuracy := self.train_accuracy.pop()) is not None:
            logs["train_mean_token_accuracy"] = accuracy
        super().log(logs, start_time)


def build_trainer(
    *,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train: TrainingData,
    validation: TrainingData | None,
    hyperparameters: ResolvedHyperparameters,
    seed: int,
    output_dir: Path,
    device: torch.device,
    compute_dtype: torch.dtype,
    bridge: ReporterBridge,
) -> Trainer:
    """A Trainer over the tokenized data, reporting through the bridge, stopping early if asked."""
    patience = hyperparameters.early_stopping_patience
    if patience is not None and validation is None:
        raise ValueError("early_stopping_patience needs validation data")
    args = training_arguments(
        hyperparameters, seed, output_dir, device, compute_dtype, has_validation=validation is not None
    )
    trainer = AccuracyTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=data_collator(train, tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[bridge] + ([EarlyStoppingCallback(patience)] if patience is not None else []),
        compute_metrics=TokenAccuracy() if validation is not None else None,
        preprocess_logits_for_metrics=most_likely_tokens if validation is not None else None,
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
        **checkpoint_and_eval_arguments(hp, has_validation=has_validation),
        # Old checkpoints were already handed to on_checkpoint; keeping two bounds the scratch disk.
        save_total_limit=2,
        # Non-reentrant checkpointing needs no inputs that require grad, which a frozen base lacks.
        gradient_checkpointing=hp.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # Token accuracy needs every eval batch's argmax ids: move them off the GPU now and then.
        eval_accumulation_steps=16,
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


def checkpoint_and_eval_arguments(hp: ResolvedHyperparameters, *, has_validation: bool) -> dict[str, Any]:
    """Checkpoint every save_steps, evaluate every eval_steps; either one without steps: each epoch's end."""
    arguments: dict[str, Any] = {"save_strategy": "epoch", "eval_strategy": "no"}
    if hp.save_steps is not None:
        arguments |= {"save_strategy": "steps", "save_steps": hp.save_steps}
    if has_validation:
        arguments["eval_strategy"] = "epoch"
        if hp.eval_steps is not None:
            arguments |= {"eval_strategy": "steps", "eval_steps": hp.eval_steps}
    if has_validation and hp.early_stopping_patience is not None:
        # Export the best evaluated adapter, not the one `patience` evaluations past it.
        arguments |= {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss"}
    return arguments
