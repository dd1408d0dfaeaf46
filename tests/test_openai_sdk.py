"""The official `openai` SDK drives loraq's files and fine-tuning jobs unchanged."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import openai
import pytest

from tests.helpers import FAST_HYPERPARAMETERS, chat_dataset, method
from tests.stack import Stack


def test_openai_sdk_round_trip(stack: Stack, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=stack.admin_key, max_retries=0)

    training = tmp_path / "train.jsonl"
    training.write_bytes(chat_dataset())
    uploaded = client.files.create(file=training.open("rb"), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == training.stat().st_size
    assert client.files.retrieve(uploaded.id).filename == "train.jsonl"

    job = client.fine_tuning.jobs.create(
        model="loraq-tiny-demo",
        training_file=uploaded.id,
        seed=99,
        suffix="sdk",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        extra_body={
            "adapter": {"type": "qlora", "r": 4, "alpha": 8},
            "method": method(**FAST_HYPERPARAMETERS),
        },
    )
    assert job.status == "queued"
    assert job.model_extra is not None and job.model_extra["adapter"]["r"] == 4

    listed = client.fine_tuning.jobs.list(limit=100)
    assert job.id in [j.id for j in listed.data]

    stack.wait_for_success(job.id)
    retrieved = client.fine_tuning.jobs.retrieve(job.id)
    assert (
        retrieved.status == "succeeded"
        and retrieved.fine_tuned_model
        and ":sdk:" in retrieved.fine_tuned_model
    )

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(e.type == "metrics" for e in events)
    assert any("completed" in e.message for e in events)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.fine_tuning_job_id for c in checkpoints.data] == [job.id] * len(checkpoints.data)
    assert checkpoints.data, "the final checkpoint is listed"
    assert checkpoints.data[0].step_number > 0

    [result_id] = retrieved.result_files
    content = client.files.content(result_id).read()
    with tarfile.open(fileobj=io.BytesIO(content)) as tar:
        assert "adapter_model.safetensors" in tar.getnames()

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    assert bad.value.body["param"] == "model"  # type: ignore[index]
