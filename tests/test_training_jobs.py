"""The training engine through the service: every data format, validation and checkpoints,
reproducible adapters, merged export. Runs on the embedded default (the engine is the same code on
both deployments, which tests/test_end_to_end.py covers)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    FAST_HYPERPARAMETERS,
    bundle_files,
    chat_dataset,
    create_job,
    download_bundle,
    job_body,
    jsonl,
    method,
    upload,
)
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.parametrize("stack", ["embedded"], indirect=True)


def color_questions(numbers: range) -> bytes:
    return jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": f"Color of {i}?"},
                    {"role": "assistant", "content": "blue blue"},
                ]
            }
            for i in numbers
        ]
    )


DATASETS = {
    "chat": color_questions(range(16)),
    "prompt_completion": jsonl(
        [{"prompt": f"Count to {i}:", "completion": " one two three"} for i in range(16)]
    ),
    "text": jsonl([{"text": f"The sky is blue number {i}. The sea is blue too."} for i in range(16)]),
}


def create(
    client: httpx.Client, training_file: str, hyperparameters: dict[str, Any] | None = None, **fields: Any
) -> str:
    """Create a quick LoRA job, fields replacing the body's own; its id."""
    quick = {
        "seed": 11,
        "adapter": {"type": "lora", "r": 4},
        "method": method(**{**FAST_HYPERPARAMETERS, **(hyperparameters or {})}),
    }
    return str(create_job(client, job_body(training_file, **quick | fields))["id"])


@pytest.mark.parametrize("dataset_format", sorted(DATASETS))
def test_each_format_trains(stack: Stack, dataset_format: str) -> None:
    with stack.client() as client:
        training = upload(client, DATASETS[dataset_format])
        assert training["format"] == dataset_format
        done = stack.wait_for_success(create(client, training["id"]))
        manifest = json.loads(bundle_files(client, done["result_files"][0])["manifest.json"])
    assert manifest["dataset"]["format"] == dataset_format
    assert manifest["dataset"]["train_sha256"] == training["sha256"]


def test_validation_and_checkpoints(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, DATASETS["chat"])
        validation = upload(client, color_questions(range(100, 108)))
        done = stack.wait_for_success(
            create(client, training["id"], {"save_steps": 3}, validation_file=validation["id"])
        )
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{done['id']}/checkpoints").json()["data"]
        assert len(checkpoints) >= 2
        assert all(c["metrics"].get("valid_loss") is not None for c in checkpoints), checkpoints
        assert done["progress"]["valid_loss"] is not None
        # Each checkpoint's adapter downloads as its own bundle, without the resume-only pickles.
        checkpoint_bundle = bundle_files(client, checkpoints[0]["result_file"])
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(checkpoint_bundle)
        assert not [name for name in checkpoint_bundle if name.endswith((".pt", ".pth", ".bin"))]
        events = client.get(f"/v1/fine_tuning/jobs/{done['id']}/events", params={"limit": 100}).json()["data"]
        assert any("valid_loss" in (e["data"] or {}) for e in events)


def test_same_seed_same_adapter_bytes(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, DATASETS["chat"])
        first, second, other = (
            stack.wait_for_success(create(client, training["id"], seed=seed)) for seed in (5, 5, 6)
        )
        adapters = [
            hashlib.sha256(
                bundle_files(client, job["result_files"][0])["adapter_model.safetensors"]
            ).hexdigest()
            for job in (first, second, other)
        ]
    assert adapters[0] == adapters[1], "same spec, data and seed: byte-identical adapter"
    assert adapters[0] != adapters[2], "another seed: another adapter"


def test_merged_export_loads_as_a_plain_model(stack: Stack, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    with stack.client() as client:
        training = upload(client, DATASETS["chat"])
        done = stack.wait_for_success(
            create(client, training["id"], export={"merged": True}, adapter={"type": "qlora", "r": 4})
        )
        assert len(done["result_files"]) == 2
        names = [client.get(f"/v1/files/{f}").json()["filename"] for f in done["result_files"]]
        merged_id = done["result_files"][names.index(next(n for n in names if "merged" in n))]
        download_bundle(client, merged_id, tmp_path)
    assert not list(tmp_path.glob("adapter_*")), "a merged model is a plain model, not an adapter"
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.isfinite().all()


@pytest.mark.parametrize("dataset_format", sorted(DATASETS))
def test_estimate_answers_without_queueing(stack: Stack, dataset_format: str) -> None:
    with stack.client() as client:
        # The worker says what it trains on when it registers; /readyz is 200 once one has.
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what="a live worker")
        training = upload(client, DATASETS[dataset_format])
        jobs_before = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]

        def estimate(packing: bool) -> dict[str, Any]:
            hyperparameters = method(n_epochs=2, batch_size=4, max_seq_len=64, packing=packing)
            response = client.post(
                "/v1/fine_tuning/jobs/estimate", json=job_body(training["id"], method=hyperparameters)
            )
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        plain, packed = estimate(False), estimate(True)
        assert client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"] == jobs_before
    assert plain["examples"] == 16 and plain["train_tokens"] > 16
    assert plain["total_steps"] == 2 * 4
    assert packed["sequences"] < plain["sequences"], "short examples pack together"
    memory = plain["memory_bytes"]
    # On a CPU worker the figure is the process's peak: its runtime and the model file's pages count too.
    parts = ("base_weights", "adapter", "optimizer", "activations", "runtime", "mapped_file")
    assert memory["total"] == sum(memory[part] for part in parts)
    # It assumes what the deployment's workers train on: this CPU worker resolves "auto" to float32.
    assert (plain["device"], plain["compute_dtype"]) == ("cpu", "float32")


def test_estimate_counts_the_validation_file_and_refuses_unknown_files(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, DATASETS["chat"])
        validation = upload(client, chat_dataset(3))
        body = job_body(training["id"], validation_file=validation["id"])
        answer = client.post("/v1/fine_tuning/jobs/estimate", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["validation_examples"] == 3
        unknown = client.post("/v1/fine_tuning/jobs/estimate", json=body | {"validation_file": "file-nope"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "validation_file"
