"""The whole path through real HTTP, a real worker process, and the real database and broker.

Each test runs on both deployments: the embedded default and Postgres + Redis.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from loraq.jobs.spec import ATTENTION_PROJECTIONS
from tests.helpers import (
    BUNDLE_FILES,
    FAST_HYPERPARAMETERS,
    all_pages,
    chat_dataset,
    create_job,
    download_bundle,
    job_body,
    job_failing_in_the_worker,
    method,
    read_manifest,
    upload,
)
from tests.stack import Stack, wait_for


def fast_job(training_file: str, adapter: dict[str, Any], **hyperparameters: Any) -> dict[str, Any]:
    """A job body that trains the demo model in seconds."""
    return job_body(
        training_file,
        seed=1234,
        adapter=adapter,
        method=method(**{**FAST_HYPERPARAMETERS, **hyperparameters}),
    )


def run_job_to_success(
    stack: Stack, adapter: dict[str, Any], tmp_path: Path
) -> tuple[dict[str, Any], Path, list[dict[str, Any]]]:
    with stack.client() as client:
        training = upload(client, chat_dataset())
        created = create_job(client, fast_job(training["id"], adapter))
        assert created["status"] == "queued"
        job = stack.wait_for_success(created["id"])
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


def test_qlora_job_end_to_end(stack: Stack, demo_model: Path, tmp_path: Path) -> None:
    adapter = {
        "type": "qlora",
        "r": 8,
        "alpha": 16,
        "target_modules": ATTENTION_PROJECTIONS,
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
    assert set(adapter_config["target_modules"]) == set(ATTENTION_PROJECTIONS)
    manifest = read_manifest(bundle)
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
    adapter = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ATTENTION_PROJECTIONS}
    job, bundle, events = run_job_to_success(stack, adapter, tmp_path)

    assert {p.name for p in bundle.iterdir()} >= BUNDLE_FILES
    assert_loss_falls(events)
    assert_adapter_changes_base(demo_model, bundle)
    manifest = read_manifest(bundle)
    assert manifest["quantized_base"].get("quantized_linear_layers", 0) == 0
    assert job["adapter"]["quantization"] is None


def test_cancel_running_job_frees_the_worker(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, chat_dataset())
        long_job = create_job(
            client, fast_job(training["id"], {"type": "lora", "r": 2}, n_epochs=50, batch_size=1)
        )

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

        next_job = create_job(client, fast_job(training["id"], {"type": "lora", "r": 2}, n_epochs=1))
    stack.wait_for_success(next_job["id"])


def test_cancel_queued_job_is_immediate(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, chat_dataset())
        created = create_job(client, fast_job(training["id"], {"type": "lora"}))
        cancelled = client.post(f"/v1/fine_tuning/jobs/{created['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
        time.sleep(2)  # a worker that picks up the message must leave it cancelled
        job = client.get(f"/v1/fine_tuning/jobs/{created['id']}").json()
    assert job["status"] == "cancelled" and job["result_files"] == []


def test_training_error_fails_the_job_with_a_readable_error(stack: Stack) -> None:
    with stack.client() as client:
        job = job_failing_in_the_worker(client)
        done = stack.wait_for_job(job["id"])
        assert done["status"] == "failed" and done["result_files"] == []
        assert done["error"]["code"] == "training_error"
        assert "max_seq_len" in done["error"]["message"], done["error"]
        events = client.get(f"/v1/fine_tuning/jobs/{done['id']}/events").json()["data"]
        assert any(e["level"] == "error" for e in events)
