"""The verdict on an adapter: the base model's valid loss and answers before step 1, the tuned ones after."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from loraq.tokens.encoding import tokenizer_of
from worker.training.contracts import Reporter, TrainingRequest
from worker.training.data import TrainingData
from worker.training.samples import SampleInput, generate_answers, inference, sample_inputs
from worker.training.trainer import ReporterBridge


@dataclass(frozen=True)
class Evaluation:
    """The job's `evaluation` object, as training goes."""

    base_valid_loss: float | None = None
    valid_loss: float | None = None
    best_valid_loss: float | None = None
    best_step: int | None = None

    @classmethod
    def of_record(cls, record: dict[str, Any] | None) -> Evaluation:
        fields = ("base_valid_loss", "valid_loss", "best_valid_loss", "best_step")
        return cls(**{name: (record or {}).get(name) for name in fields})

    def after(self, step: int, valid_loss: float) -> Evaluation:
        """This evaluation with the tuned adapter's valid loss at `step`."""
        better = self.best_valid_loss is None or valid_loss < self.best_valid_loss
        if better:
            return replace(self, valid_loss=valid_loss, best_valid_loss=valid_loss, best_step=step)
        return replace(self, valid_loss=valid_loss)

    def record(self) -> dict[str, Any]:
        """The wire form, with improvement: how much lower than the base's the valid loss is, a fraction."""
        base, tuned = self.base_valid_loss, self.valid_loss
        improvement = (base - tuned) / base if base and tuned is not None else None
        return {
            "base_valid_loss": base,
            "valid_loss": tuned,
            "best_valid_loss": self.best_valid_loss,
            "best_step": self.best_step,
            "improvement": improvement,
        }


class Verdict(TrainerCallback):
    """Measures the base model once, then the tuned adapter at each evaluation, and reports both.

    Each tuned evaluation also answers the sample inputs greedily; nothing here draws from an RNG that
    training uses, so an adapter trained with a verdict is byte-identical to one trained without.
    """

    def __init__(
        self,
        request: TrainingRequest,
        *,
        model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        inputs: list[SampleInput],
        has_validation: bool,
        reporter: Reporter,
        bridge: ReporterBridge,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.has_validation = has_validation
        self.max_new_tokens = request.sample_max_new_tokens
        self.reporter = reporter
        self.bridge = bridge
        self.evaluation = Evaluation.of_record(request.evaluation)
        # A base measured by an earlier attempt of the job is not measured again.
        self.base_outputs = [sample["base_output"] for sample in request.base_samples or []]
        self.measured = request.base_samples is not None
        self.answered: dict[int, list[dict[str, Any]]] = {}  # this run's tuned answers, by step
        self._state: TrainerState | None = None

    @property
    def active(self) -> bool:
        return self.has_validation or bool(self.inputs)

    def measure_base(self, trainer: Trainer, validation: TrainingData | None) -> None:
        """Before step 1: the base model's valid loss and answers, reported on the job."""
        if not self.active or self.measured:
            self._note_base_loss()
            return
        if validation is not None:
            loss = base_valid_loss(trainer, self.model, validation)
            self.evaluation = replace(self.evaluation, base_valid_loss=loss)
        self.base_outputs = self._answer(base=True)
        self.reporter.on_baseline(
            self.evaluation.record() if self.has_validation else None,
            [
                {"input": sample.input, "reference": sample.reference, "base_output": output}
                for sample, output in zip(self.inputs, self.base_outputs, strict=True)
            ],
        )
        self.measured = True
        self._note_base_loss()

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and "eval_loss" in metrics:
            self.evaluation = self.evaluation.after(state.global_step, metrics["eval_loss"])
        self._state = state
        self._report_tuned(state.global_step)

    def final_samples(self, state: TrainerState, exported_step: int) -> list[dict[str, Any]]:
        """The exported adapter's answers: from its evaluation, else generated now (no validation data)."""
        if not self.active:
            return []
        self._state = state
        if exported_step not in self.answered:
            self._report_tuned(exported_step)
        return self.answered[exported_step]

    def record(self) -> dict[str, Any] | None:
        """The job's evaluation object; None without validation data."""
        return self.evaluation.record() if self.has_validation else None

    def _report_tuned(self, step: int) -> None:
        outputs = self._answer(base=False)
        self.answered[step] = [
            {
                "step": step,
                "index": index,
                "input": sample.input,
                "reference": sample.reference,
                "base_output": base_output,
                "output": output,
            }
            for index, (sample, base_output, output) in enumerate(
                zip(self.inputs, self.base_outputs, outputs, strict=True)
            )
        ]
        rows = [{key: value for key, value in row.items() if key != "step"} for row in self.answered[step]]
        self.reporter.on_evaluation(step, self.record(), rows)

    def _answer(self, *, base: bool) -> list[str]:
        return generate_answers(
            self.model,
            self.tokenizer,
            self.inputs,
            max_new_tokens=self.max_new_tokens,
            base=base,
            tick=self._tick,
        )

    def _tick(self) -> None:
        if self._state is not None:  # generation time shows in the job's progress, as training's does
            self.bridge.refresh_progress(self._state)

    def _note_base_loss(self) -> None:
        """Each checkpoint's metrics (and the bundle's manifest) carry the base's valid loss too."""
        if self.evaluation.base_valid_loss is not None:
            self.bridge.latest["base_valid_loss"] = self.evaluation.base_valid_loss


def base_valid_loss(trainer: Trainer, model: PeftModel, validation: TrainingData) -> float:
    """The base model's valid loss (adapter disabled), over the batches and tokens trainer.evaluate() sees.

    The Trainer's own steps (prediction_step, its collator and batch size), its mean weighted by batch
    size as evaluation_loop's; without evaluate(), which would log a step-0 eval, and without accelerate
    preparing the model before train() does.
    """
    loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        validation,  # type: ignore[arg-type]
        batch_size=trainer.args.eval_batch_size,
        collate_fn=trainer.data_collator,
        shuffle=False,
    )
    total, examples = 0.0, 0
    with inference(model, base=True):
        for batch in loader:
            loss, _, _ = trainer.prediction_step(model, batch, prediction_loss_only=True)
            assert loss is not None
            size = int(batch["input_ids"].shape[0])
            total += float(loss.detach().to(torch.float64)) * size
            examples += size
    return total / examples


def build_verdict(
    request: TrainingRequest,
    *,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    has_validation: bool,
    reporter: Reporter,
    bridge: ReporterBridge,
) -> Verdict:
    """The verdict of a run: its sample inputs tokenized as training formats them."""
    return Verdict(
        request,
        model=model,
        tokenizer=tokenizer,
        inputs=sample_inputs(request, tokenizer_of(request.base_model_path)),
        has_validation=has_validation,
        reporter=reporter,
        bridge=bridge,
    )
