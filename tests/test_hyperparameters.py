""" "auto" hyperparameters resolve from the dataset's size, and what a request names is kept."""

from __future__ import annotations

import pytest

from loraq.jobs.spec import MAX_METRICS_POINTS, JobCreate


def resolved(n_examples: int, **hyperparameters: object) -> dict[str, object]:
    request = JobCreate.model_validate(
        {
            "model": "loraq-tiny-demo",
            "training_file": "file-abc",
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        }
    )
    return request.requested_hyperparameters.resolve(n_examples=n_examples).model_dump()


@pytest.mark.parametrize(
    ("n_examples", "hyperparameters", "expected"),
    [
        (40, {}, {"n_epochs": 3, "batch_size": 1, "logging_steps": 1}),  # 120 steps: each one logged
        (3200, {}, {"n_epochs": 1, "batch_size": 8, "logging_steps": 1}),  # 400 steps
        # 100,000 steps: every 100th, so the job records 1,000 metrics events, not 100,000.
        (100_000, {"n_epochs": 1, "batch_size": 1}, {"logging_steps": 100}),
        # Accumulation makes fewer optimizer steps: 25,000, every 25th.
        (100_000, {"n_epochs": 1, "batch_size": 1, "gradient_accumulation_steps": 4}, {"logging_steps": 25}),
        # What the request names wins, large or small.
        (100_000, {"n_epochs": 1, "batch_size": 1, "logging_steps": 1}, {"logging_steps": 1}),
        (40, {"logging_steps": 7}, {"logging_steps": 7}),
    ],
)
def test_auto_resolves_from_the_dataset(
    n_examples: int, hyperparameters: dict[str, object], expected: dict[str, object]
) -> None:
    got = resolved(n_examples, **hyperparameters)
    assert {name: got[name] for name in expected} == expected


def test_a_long_job_logs_at_most_the_bounded_number_of_points() -> None:
    for n_examples in (999, 1000, 1001, 12_345, 1_000_000):
        got = resolved(n_examples, n_epochs=2, batch_size=1)
        steps = 2 * n_examples
        assert isinstance(got["logging_steps"], int)
        assert steps // got["logging_steps"] <= MAX_METRICS_POINTS
        # And it is the least such interval.
        assert got["logging_steps"] == 1 or steps / (got["logging_steps"] - 1) > MAX_METRICS_POINTS
