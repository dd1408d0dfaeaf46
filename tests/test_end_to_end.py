"""The whole path through real HTTP, a real worker process, and the real database and broker.

Each test runs on both deployments: the embedded default and Postgres + Redis.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAST_HYPERPARAMETERS, chat_dataset, upload
from tests.stack import Stack, wait_for

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
FINISHED = {"succeeded", "failed", "cancelled"}


def job_body(training_file: str, adapter: dict[str, Any], **hyperparameters: Any) -> dict[str, Any]:
    return {
        "model": "loraq-tiny-demo",
        "training_file": training_file,
        "seed": 1234,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {**FAST_HYPERPARAMETERS, **hyperparameters}},
        },
        "adapter": adapter,
    }


def all_pages(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = None
    while True:
        page = client.get(path, params={"limit": 100, **({"after": after} if after else {})}).json()
        items += page["data"]
        if not page["has_more"]:
            return items
        after = page["data"][-1]["id"]


def download_bundle(client: httpx.Client, file_id: str, dest: Path) -> Path:
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_job_to_success(
    stack: Stack, adapter: dict[str, Any], tmp_path: Path
) -> tuple[dict[str, Any], Path, list[dict[str, Any]]]:
    with stack.client() as client:
        training = upload(client, chat_dataset())
        created = client.post("/v1/fine_tuning/jobs", json=job_body(training["id"], adapter))
        assert created.status_code == 200, created.text
        assert created.json()["status"] == "queued"
        job = stack.wait_for_job(created.json()["id"], FINISHED)
        assert job["status"] == "succeeded", (job["error"], stack.all_worker_logs())
        events = all_pages(client, f"/v1/fine_tuning/jobs/{job['id']}/events")
        [result_file] = job["result_files"]
        bundle = download_bundle(client, result_file, tmp_path / "bundle")
    return job, bundle, events


def assert_loss_falls(events: list[dict[str, Any]]) -> None:
    metrics = sorted(
        (e["data"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]),
        key=lambda data: data["step"],
    )
    assert len(metrics) >= 4, metrics
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"], metrics


def assert_adapter_changes_base(demo_model: Path, bundle: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    inputs = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.no_grad():
        before = base(input_ids=inputs).logits.clone()
        tuned = PeftModel.from_pretrained(base, bundle)
        after = tuned(input_ids=inputs).logits
    assert (after - before).abs().max().item() > 1e-3


BUNDLE_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "training_args.json",
    "manifest.json",
    "README.md",
}


def test_qlora_job_end_to_end(stack: Stack, demo_model: Path, tmp_path: Path) -> None:
    adapter = {
        "type": "qlora",
        "r": 8,
        "alpha": 16,
        "target_modules": ATTENTION,
        "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True},
    }
    job, bundle, events = run_job_to_success(stack, adapter, tmp_path)

    assert job["fine_tuned_model"].startswith("ft:loraq-tiny-demo:")
    assert job["trained_tokens"] > 0
    assert {p.name for p in bundle.iterdir()} >= BUNDLE_FILES
    assert_loss_falls(events)
    assert_adapter_changes_base(demo_model, bundle)

    adapter_config = json.loads((bundle / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert set(adapter_config["target_modules"]) == set(ATTENTION)
    manifest = json.loads((bundle / "manifest.json").read_text())
    base = manifest["quantized_base"]
    # Every attention projection of the frozen base was a 4-bit NF4 layer while it trained.
    assert base["linear_layer_types"].get("Linear4bit", 0) >= 4 * 2, base
    assert base["quant_type"] == "nf4" and base["bits"] == 4 and base["double_quant"] is True
    assert manifest["seed"] == 1234

    with stack.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["loraq-tiny-demo"]["kind"] == "base"
    assert models[job["fine_tuned_model"]]["kind"] == "adapter"


def test_lora_job_end_to_end(stack: Stack, demo_model: Path, tmp_path: Path) -> None:
    adapter = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ATTENTION}
    job, bundle, events = run_job_to_success(stack, adapter, tmp_path)

    assert {p.name for p in bundle.iterdir()} >= BUNDLE_FILES
    assert_loss_falls(events)
    assert_adapter_changes_base(demo_model, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["quantized_base"].get("quantized_linear_layers", 0) == 0
    assert job["adapter"]["quantization"] is None


def test_cancel_running_job_frees_the_worker(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, chat_dataset())
        long_job = client.post(
            "/v1/fine_tuning/jobs",
            json=job_body(training["id"], {"type": "lora", "r": 2}, n_epochs=50, batch_size=1),
        ).json()

        def training_steps() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{long_job['id']}").json()
            assert job["status"] in {"queued", "running"}, job
            return job if (job["progress"] or {}).get("step", 0) >= 2 else None

        wait_for(training_steps, timeout=180, interval=0.3, what="the long job to train a few steps")
        cancelled = client.post(f"/v1/fine_tuning/jobs/{long_job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

        # The worker notices within a step or so and stops: progress stops moving.
        time.sleep(3)
        step_then = client.get(f"/v1/fine_tuning/jobs/{long_job['id']}").json()["progress"]["step"]
        time.sleep(3)
        after = client.get(f"/v1/fine_tuning/jobs/{long_job['id']}").json()
        assert after["status"] == "cancelled" and after["result_files"] == []
        assert after["progress"]["step"] == step_then
        assert after["progress"]["step"] < after["progress"]["total_steps"]

        # A second cancel is a conflict, not a silent success.
        assert client.post(f"/v1/fine_tuning/jobs/{long_job['id']}/cancel").status_code == 409

        next_job = client.post(
            "/v1/fine_tuning/jobs", json=job_body(training["id"], {"type": "lora", "r": 2}, n_epochs=1)
        ).json()
    assert stack.wait_for_job(next_job["id"], FINISHED)["status"] == "succeeded"


def test_cancel_queued_job_is_immediate(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, chat_dataset())
        created = client.post("/v1/fine_tuning/jobs", json=job_body(training["id"], {"type": "lora"}))
        cancelled = client.post(f"/v1/fine_tuning/jobs/{created.json()['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
        time.sleep(2)  # a worker that picks up the message must leave it cancelled
        job = client.get(f"/v1/fine_tuning/jobs/{created.json()['id']}").json()
    assert job["status"] == "cancelled" and job["result_files"] == []


def test_training_error_fails_the_job_with_a_readable_error(stack: Stack) -> None:
    # Every answer lies past max_seq_len, so no example has a token to learn from.
    long_system = "context " * 40
    lines = [
        {
            "messages": [
                {"role": "system", "content": long_system},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        }
        for _ in range(4)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with stack.client() as client:
        training = upload(client, content)
        job = client.post(
            "/v1/fine_tuning/jobs", json=job_body(training["id"], {"type": "lora"}, max_seq_len=16)
        )
        done = stack.wait_for_job(job.json()["id"], FINISHED)
        assert done["status"] == "failed" and done["result_files"] == []
        assert done["error"]["code"] == "training_error"
        assert "max_seq_len" in done["error"]["message"] or "trainable" in done["error"]["message"], done[
            "error"
        ]
        events = client.get(f"/v1/fine_tuning/jobs/{done['id']}/events").json()["data"]
        assert any(e["level"] == "error" for e in events)
