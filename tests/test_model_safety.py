"""Base models come only from the operator's directories or allowed hub ids, and only as safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import chat_dataset, job_body, upload
from tests.stack import Stack


def test_pickle_only_models_and_hub_ids_are_refused(stack: Stack, demo_model: Path) -> None:
    pickled = stack.home / "models" / "pickle-only-model"
    pickled.mkdir(exist_ok=True)
    shutil.copy(demo_model / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    try:
        with stack.client() as client:
            listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
            assert "pickle-only-model" not in listed and "loraq-tiny-demo" in listed
            training = upload(client, chat_dataset(2))
            for model in ("pickle-only-model", "HuggingFaceTB/SmolLM2-135M", "../loraq-tiny-demo", "/etc"):
                response = client.post("/v1/fine_tuning/jobs", json=job_body(training["id"], model=model))
                assert response.status_code == 400, (model, response.text)
                assert response.json()["error"]["param"] == "model"
    finally:
        shutil.rmtree(pickled)


def test_demo_model_is_safetensors_without_remote_code(demo_model: Path) -> None:
    assert list(demo_model.glob("*.safetensors")) and not list(demo_model.glob("*.bin"))
    config = json.loads((demo_model / "config.json").read_text())
    assert "auto_map" not in config, "no custom code to trust"
