"""An ft: model of the caller's project can be fine-tuned further, as OpenAI allows (issue 8, point 11)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.helpers import (
    FAST_HYPERPARAMETERS,
    all_pages,
    bundle_files,
    chat_dataset,
    create_job,
    job_body,
    method,
    upload,
)
from tests.stack import Stack
from tests.test_tenancy import project_key


def first_train_loss(client: httpx.Client, job_id: str) -> float:
    events = all_pages(client, f"/v1/fine_tuning/jobs/{job_id}/events")
    [first] = [e["data"] for e in events if e["type"] == "metrics" and e["data"]["step"] == 1]
    loss: float = first["train_loss"]
    return loss


def test_an_ft_model_trains_further_from_its_adapter(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, chat_dataset())
        body = job_body(
            training["id"], seed=7, adapter={"type": "lora", "r": 4}, method=method(**FAST_HYPERPARAMETERS)
        )
        parent = stack.wait_for_success(create_job(client, body)["id"])
        ft_model = parent["fine_tuned_model"]
        assert ft_model in [m["id"] for m in client.get("/v1/models").json()["data"]]

        # No adapter given: the child takes its parent's (r 4, LoRA), and starts from its weights.
        child_body: dict[str, Any] = {k: v for k, v in body.items() if k != "adapter"} | {"model": ft_model}
        child = stack.wait_for_success(create_job(client, child_body)["id"])
        assert (
            child["model"] == ft_model and child["adapter"]["r"] == 4 and child["adapter"]["type"] == "lora"
        )
        assert child["fine_tuned_model"].startswith("ft:loraq-tiny-demo:")
        # It begins where the parent ended: its first loss is already below the parent's first.
        assert first_train_loss(client, child["id"]) < first_train_loss(client, parent["id"]) - 0.1
        manifest = json.loads(bundle_files(client, child["result_files"][0])["manifest.json"])
        assert manifest["continues"] == ft_model and manifest["base_model"]["name"] == "loraq-tiny-demo"

        # The parent's weights fit only an adapter of the same shape.
        other_shape = client.post(
            "/v1/fine_tuning/jobs", json=child_body | {"adapter": {"type": "lora", "r": 8}}
        )
        assert other_shape.status_code == 400 and other_shape.json()["error"]["param"] == "adapter.r"
        assert "r=4" in other_shape.json()["error"]["message"]
        qlora = client.post("/v1/fine_tuning/jobs", json=child_body | {"adapter": {"type": "qlora"}})
        assert qlora.status_code == 200, qlora.text
        assert qlora.json()["adapter"]["r"] == 4 and qlora.json()["adapter"]["quantization"]["bits"] == 4
        client.post(f"/v1/fine_tuning/jobs/{qlora.json()['id']}/cancel")

    # Another project's ft: model is not this project's to train.
    with stack.client(project_key(stack, name=f"stranger-{stack.name}")) as stranger:
        mine = upload(stranger, chat_dataset(4))
        refused = stranger.post("/v1/fine_tuning/jobs", json=job_body(mine["id"]) | {"model": ft_model})
        assert refused.status_code == 400, refused.text
        assert (
            refused.json()["error"]["param"] == "model"
            and refused.json()["error"]["code"] == "model_not_found"
        )
