"""On the real SmolLM2: a LoRA and a QLoRA job on a slice of the example data, each with its verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loraq.base_models.catalog import SMOLLM2_MODEL_NAME
from tests.helpers import create_job, jsonl, method, upload
from tests.stack import Stack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "json_answers"


def examples(name: str, count: int) -> list[dict[str, Any]]:
    with (EXAMPLE / name).open(encoding="utf-8") as file:
        return [json.loads(line) for line, _ in zip(file, range(count), strict=False)]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)  # the model is the point, not the deployment
def test_lora_and_qlora_on_smollm2_beat_the_base(stack: Stack) -> None:
    client = stack.client()
    training = upload(client, jsonl(examples("train.jsonl", 16)))
    validation = upload(client, jsonl(examples("validation.jsonl", 4)), filename="validation.jsonl")
    prompts = [record["messages"][:2] for record in examples("validation.jsonl", 2)]
    jobs = [
        create_job(
            client,
            {
                "model": SMOLLM2_MODEL_NAME,
                "training_file": training["id"],
                "validation_file": validation["id"],
                "seed": 0,
                # Four steps of 4 at a high rate: enough to learn the answers' JSON format, unlike the base.
                "method": method(n_epochs=1, batch_size=4, learning_rate=3e-3, max_seq_len=128),
                "adapter": {"type": adapter_type, "r": 16, "alpha": 32, "dropout": 0.0},
                "samples": [{"messages": messages} for messages in prompts],
                "sample_max_new_tokens": 8,
            },
        )
        for adapter_type in ("lora", "qlora")
    ]
    for job in jobs:
        done = stack.wait_for_success(job["id"], timeout=600)
        evaluation = done["evaluation"]
        fields = {"base_valid_loss", "valid_loss", "best_valid_loss", "best_step", "improvement"}
        assert set(evaluation) == fields
        assert evaluation["valid_loss"] < evaluation["base_valid_loss"], evaluation
        assert evaluation["best_step"] == 4 and evaluation["improvement"] > 0
        samples = client.get(f"/v1/fine_tuning/jobs/{job['id']}/samples").json()["data"]
        assert [(row["step"], row["index"]) for row in samples] == [(4, 0), (4, 1)]
        assert [row["input"] for row in samples] == prompts
        # The base answers in prose; the answers of both are real text.
        assert all(row["base_output"].strip() and row["output"].strip() for row in samples)
        assert not any(row["base_output"].lstrip().startswith('{"answer"') for row in samples)
