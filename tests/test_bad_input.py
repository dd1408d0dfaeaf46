"""A caller's mistake gets a 4xx in OpenAI's error shape naming what is wrong, and nothing is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import all_pages, chat_dataset, job_body, jsonl, method, upload
from tests.stack import Stack


def assert_error(response: httpx.Response, status: int, *, param: str | None, mentions: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert mentions in error["message"], error


def stored_blobs(stack: Stack) -> set[Path]:
    return set((stack.home / "artifacts").rglob("*"))


def counts(client: httpx.Client) -> tuple[int, int]:
    files = all_pages(client, "/v1/files")  # every file: a page is 20 by default
    jobs = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
    return len(files), len(jobs)


@pytest.fixture
def training_file(stack: Stack) -> dict[str, Any]:
    with stack.client() as client:
        return upload(client, chat_dataset(8))


def test_malformed_dataset_line_is_rejected_and_not_stored(stack: Stack) -> None:
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    bad = '{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}\n'
    with stack.client() as client:
        before, blobs = counts(client), stored_blobs(stack)
        response = client.post(
            "/v1/files", files={"file": ("t.jsonl", (good + bad).encode())}, data={"purpose": "fine-tune"}
        )
        assert_error(response, 400, param="file", mentions="line 2: messages[1].role")
        assert counts(client) == before
    assert stored_blobs(stack) == blobs


def test_wrong_purpose_is_rejected(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post(
            "/v1/files", files={"file": ("t.jsonl", chat_dataset(2))}, data={"purpose": "assistants"}
        )
    assert_error(response, 400, param="purpose", mentions="fine-tune")


@pytest.mark.parametrize(
    ("change", "param", "mentions"),
    [
        ({"model": "no-such-model"}, "model", "no-such-model"),
        ({"model": "meta-llama/Llama-3-8B"}, "model", "not available"),
        ({"training_file": "file-doesnotexist"}, "training_file", "file-doesnotexist"),
        (
            {"method": method(n_epochs=0)},
            "method.supervised.hyperparameters.n_epochs",
            "greater than or equal to 1",
        ),
        (
            {"method": method(learning_rate=-1)},
            "method.supervised.hyperparameters.learning_rate",
            "greater than 0",
        ),
        (
            {"method": method(batch_size="big")},
            "method.supervised.hyperparameters.batch_size",
            "batch_size",
        ),
        ({"adapter": {"type": "qlora", "r": 0}}, "adapter.r", "greater than or equal to 1"),
        ({"adapter": {"type": "qlora", "quantization": {"bits": 3}}}, "adapter.quantization.bits", "4 or 8"),
        ({"adapter": {"type": "lora", "quantization": {"bits": 4}}}, "adapter", "only to type 'qlora'"),
        ({"adapter": {"type": "dora"}}, "adapter.type", "'lora' or 'qlora'"),
        ({"adapter": {"target_modules": []}}, "adapter.target_modules", "at least 1"),
        # Known at create, not minutes later in the worker: the base has no such layer.
        (
            {"adapter": {"target_modules": ["q_proj", "nonexistent_proj"]}},
            "adapter.target_modules",
            "nonexistent",
        ),
        ({"unknown_field": 1}, "unknown_field", "Extra inputs"),
        ({"seed": -5}, "seed", "greater than or equal to 0"),
        ({"suffix": "has spaces!"}, "suffix", "pattern"),
    ],
)
def test_bad_job_spec_is_rejected_and_no_job_is_written(
    stack: Stack, training_file: dict[str, Any], change: dict[str, Any], param: str, mentions: str
) -> None:
    body = job_body(training_file["id"]) | change
    with stack.client() as client:
        before = counts(client)
        response = client.post("/v1/fine_tuning/jobs", json=body)
        assert_error(response, 400, param=param, mentions=mentions)
        assert counts(client) == before


def test_result_file_cannot_be_a_training_file(stack: Stack, training_file: dict[str, Any]) -> None:
    with stack.client() as client:
        response = client.post(
            "/v1/fine_tuning/jobs",
            json=job_body(training_file["id"], validation_file="file-nope"),
        )
    assert_error(response, 400, param="validation_file", mentions="file-nope")


def test_missing_or_wrong_api_key_is_401(stack: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer lq-wrong"}, {"Authorization": "Basic abc"}):
        response = httpx.get(stack.base_url + "/v1/fine_tuning/jobs", headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        response = httpx.post(
            stack.base_url + "/v1/files",
            headers=headers,
            files={"file": ("t.jsonl", chat_dataset(2))},
            data={"purpose": "fine-tune"},
        )
        assert response.status_code == 401
    assert httpx.get(stack.base_url + "/healthz").status_code == 200


def test_unknown_ids_are_404_in_the_error_shape(stack: Stack) -> None:
    with stack.client() as client:
        for path in (
            "/v1/files/file-nope",
            "/v1/files/file-nope/content",
            "/v1/fine_tuning/jobs/ftjob-nope",
            "/v1/fine_tuning/jobs/ftjob-nope/events",
            "/v1/fine_tuning/jobs/ftjob-nope/checkpoints",
            "/v1/fine_tuning/jobs/ftjob-nope/samples",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
        assert client.post("/v1/fine_tuning/jobs/ftjob-nope/cancel").status_code == 404
        assert client.delete("/v1/files/file-nope").status_code == 404


def test_bad_list_cursor_is_400(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"})
    assert_error(response, 400, param="after", mentions="ftjob-nope")


def test_what_would_fail_in_the_worker_is_refused_up_front(stack: Stack) -> None:
    """Known before any training: each answers 400 naming its field, instead of a job that fails later."""
    with stack.client() as client:
        single = upload(client, chat_dataset(1))
        before = counts(client)
        response = client.post(
            "/v1/fine_tuning/jobs", json=job_body(single["id"], method=method(validation_split=0.2))
        )
        assert_error(
            response, 400, param="method.supervised.hyperparameters.validation_split", mentions="at least 2"
        )
        assert counts(client) == before
        # Every answer lies past max_seq_len: no example keeps a token to train on.
        long_prompts = upload(
            client,
            jsonl(
                [
                    {"prompt": "Tell me the color of item number " * 8, "completion": f"blue {i}"}
                    for i in range(4)
                ]
            ),
        )
        for body, param in (
            (
                job_body(long_prompts["id"], method=method(max_seq_len=16)),
                "method.supervised.hyperparameters",
            ),
            (job_body(long_prompts["id"], hyperparameters={"max_seq_len": 16}), "hyperparameters"),
        ):
            response = client.post("/v1/fine_tuning/jobs", json=body)
            assert_error(response, 400, param=f"{param}.max_seq_len", mentions="no example")
        assert counts(client)[1] == before[1]
        fits = client.post(
            "/v1/fine_tuning/jobs", json=job_body(long_prompts["id"], method=method(max_seq_len=512))
        )
        assert fits.status_code == 200, fits.text
        client.post(f"/v1/fine_tuning/jobs/{fits.json()['id']}/cancel")
        before = counts(client)
        # A chat template reads each tool as an object: the upload refuses what it would choke on.
        tools = jsonl(
            [
                {
                    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                    "tools": [1, "x", None],
                }
            ]
        )
        response = client.post("/v1/files", files={"file": ("t.jsonl", tools)}, data={"purpose": "fine-tune"})
        assert_error(response, 400, param="file", mentions="line 1: tools[0] must be an object")
        assert counts(client) == before
