"""Quality gates: numbers a finished job must reach for a CI step to pass (exit 5 when one is missed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer

from loraq.cli.options import shared_options
from loraq.client import Job, JobEvent


@dataclass(frozen=True)
class Gates:
    max_valid_loss: float | None = None
    min_improvement: float | None = None  # percent
    max_train_loss: float | None = None

    @property
    def any(self) -> bool:
        return any(value is not None for value in asdict(self).values())


@dataclass(frozen=True)
class Verdict:
    gate: str
    passed: bool
    value: float | None
    threshold: float
    message: str


def judge(gates: Gates, job: Job, events: Sequence[JobEvent]) -> list[Verdict]:
    """Each asked-for gate's verdict on a finished job; `events` newest first (the metrics fallback)."""
    verdicts = []
    if gates.max_valid_loss is not None:
        value = _final_valid_loss(job, events)
        verdicts.append(
            _at_most("max_valid_loss", "final valid loss", value, gates.max_valid_loss, missing=NO_VALID_LOSS)
        )
    if gates.min_improvement is not None:
        verdicts.append(_improvement(job, gates.min_improvement))
    if gates.max_train_loss is not None:
        value = job.progress.train_loss if job.progress else None
        value = value if value is not None else _last_metric(events, "train_loss")
        verdicts.append(
            _at_most("max_train_loss", "final train loss", value, gates.max_train_loss, missing=NO_TRAIN_LOSS)
        )
    return verdicts


NO_VALID_LOSS = "the job reported no validation loss (it needs a validation file or validation_split)"
NO_TRAIN_LOSS = "the job reported no train loss"


def _at_most(gate: str, what: str, value: float | None, threshold: float, *, missing: str) -> Verdict:
    if value is None:
        return Verdict(gate, False, None, threshold, f"{gate}: failed: {missing}")
    passed = value <= threshold
    sign = "<=" if passed else ">"
    outcome = "passed" if passed else "failed"
    message = f"{gate}: {outcome}: {what} {value:.4f} {sign} {threshold:g}"
    return Verdict(gate, passed, value, threshold, message)


def _improvement(job: Job, percent: float) -> Verdict:
    evaluation = job.evaluation
    if evaluation is None or evaluation.improvement is None:
        why = (
            "the job has no evaluation (it needs a validation file or validation_split)"
            if evaluation is None
            else "the job's evaluation has no improvement figure (no base or final validation loss)"
        )
        return Verdict("min_improvement", False, None, percent, f"min_improvement: failed: {why}")
    value = evaluation.improvement * 100
    passed = value >= percent
    base, final = evaluation.base_valid_loss, evaluation.valid_loss
    losses = f" (base model {base:.4f} -> {final:.4f})" if base is not None and final is not None else ""
    sign = ">=" if passed else "<"
    return Verdict(
        "min_improvement",
        passed,
        value,
        percent,
        f"min_improvement: {'passed' if passed else 'failed'}: valid loss {value:.1f}% below the base "
        f"model's {sign} {percent:g}%{losses}",
    )


def _final_valid_loss(job: Job, events: Sequence[JobEvent]) -> float | None:
    for value in (
        job.evaluation.valid_loss if job.evaluation else None,
        job.progress.valid_loss if job.progress else None,
    ):
        if value is not None:
            return value
    return _last_metric(events, "valid_loss")


def _last_metric(events: Sequence[JobEvent], name: str) -> float | None:
    for event in events:
        value = (event.data or {}).get(name)
        if event.type == "metrics" and isinstance(value, int | float):
            return float(value)
    return None


def verdicts_json(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    return [asdict(verdict) for verdict in verdicts]


MaxValidLoss = Annotated[
    float | None,
    typer.Option(help="Gate: the final validation loss must be at most this.", show_default=False),
]
MinImprovement = Annotated[
    float | None,
    typer.Option(
        help="Gate: the validation loss must be at least this many percent below the base model's "
        "on the same validation data (needs validation data).",
        show_default=False,
    ),
]
MaxTrainLoss = Annotated[
    float | None, typer.Option(help="Gate: the final train loss must be at most this.", show_default=False)
]

with_gates = shared_options(
    "gates",
    {
        "max_valid_loss": (MaxValidLoss, None),
        "min_improvement": (MinImprovement, None),
        "max_train_loss": (MaxTrainLoss, None),
    },
    Gates,
)
