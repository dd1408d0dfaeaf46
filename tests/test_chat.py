"""POST /v1/chat/completions in OpenAI's shape, answered by each worker's chat process on its own queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from openai import OpenAI
from sqlalchemy.orm import Session

from loraq.base_models.catalog import DEMO_MODEL_NAME, SMOLLM2_MODEL_NAME
from loraq.chat import repository, service
from loraq.chat.spec import ChatCompletionCreate
from loraq.core.errors import ServiceUnavailable
from loraq.core.settings import Settings
from loraq.projects.tables import Project
from tests.helpers import (
    FAST_HYPERPARAMETERS,
    chat_dataset,
    create_job,
    download_bundle,
    job_body,
    method,
    migrated_engine,
    slow_dataset,
    upload,
)
from tests.stack import Stack, wait_for

QUESTION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What color is item 3?"},
]


def sdk(stack: Stack, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=stack.base_url + "/v1", api_key=key or stack.admin_key, max_retries=0, timeout=120)


def chat(stack: Stack, key: str | None = None, **body: Any) -> Any:
    with stack.client(key) as client:
        return client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4, **body})


@pytest.fixture(scope="module")
def trained(stack: Stack) -> Iterator[dict[str, Any]]:
    """A succeeded job of the admin key's project: a tiny LoRA on the demo model."""
    with stack.client() as client:
        training = upload(client, chat_dataset())
        lora = {"type": "lora", "r": 4}
        body = job_body(training["id"], adapter=lora, method=method(**FAST_HYPERPARAMETERS))
        job = create_job(client, body)
    yield stack.wait_for_success(job["id"])


@pytest.fixture
def fine_tuned(trained: dict[str, Any]) -> str:
    model: str = trained["fine_tuned_model"]
    return model


def local_answer(demo_model: Path, bundle: Path, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """The greedy answer of the adapter in `bundle`, loaded here with peft: what the server must say."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.chat import generate

    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, bundle).eval()
    greedy = {"temperature": 0, "top_p": 1.0, "seed": None, "stop": []}
    generation = {"messages": messages, "max_new_tokens": max_new_tokens, **greedy}
    return generate(model, AutoTokenizer.from_pretrained(bundle), generation, torch.device("cpu")).content


def test_the_sdk_chats_with_a_base_model(stack: Stack) -> None:
    completion = sdk(stack).chat.completions.create(
        model=DEMO_MODEL_NAME,
        messages=QUESTION,
        max_completion_tokens=6,
        temperature=0,  # type: ignore[arg-type]
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == DEMO_MODEL_NAME
    [choice] = completion.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in {"stop", "length"}
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 10
    assert 1 <= completion.usage.completion_tokens <= 6
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # A seed makes sampling repeatable; greedy is repeatable anyway.
    sampled = [
        chat(stack, model=DEMO_MODEL_NAME, temperature=1.5, top_p=0.9, seed=7, max_tokens=8).json()
        for _ in range(2)
    ]
    assert sampled[0]["choices"] == sampled[1]["choices"]


# Training the ft: model is the slow part: once, on the embedded deployment (chats cross Redis above too).
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_an_ft_model_answers_and_stays_loaded(
    stack: Stack, trained: dict[str, Any], demo_model: Path, tmp_path: Path
) -> None:
    fine_tuned = trained["fine_tuned_model"]
    first = sdk(stack).chat.completions.create(
        model=fine_tuned,
        messages=QUESTION,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    assert first.model == fine_tuned
    # The adapter speaks, as peft loads it from the job's result bundle; the base says something else.
    with stack.client() as client:
        bundle = download_bundle(client, trained["result_files"][0], tmp_path / "bundle")
    assert first.choices[0].message.content == local_answer(demo_model, bundle, QUESTION, 4)
    base = chat(stack, model=DEMO_MODEL_NAME, temperature=0).json()
    assert base["choices"][0]["message"]["content"] != first.choices[0].message.content
    second = chat(stack, model=fine_tuned, temperature=0).json()
    counters = [first.model_extra["loraq"], base["loraq"], second["loraq"]]  # type: ignore[index]
    assert len({c["worker"] for c in counters}) == 1, counters
    # One base and one adapter load at most: the second ft: answer and the base's reloaded nothing.
    assert counters[2]["adapter_loads"] == counters[0]["adapter_loads"]
    assert counters[2]["base_loads"] == counters[0]["base_loads"]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_another_projects_ft_model_is_not_found(stack: Stack, fine_tuned: str) -> None:
    with stack.client() as admin:
        project = admin.post("/v1/projects", json={"name": "chat-outsider"}).json()
        key = admin.post(f"/v1/projects/{project['id']}/api_keys").json()["value"]
    response = chat(stack, key, model=fine_tuned)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "no-such-model"}, 404, "model"),
        ({"model": "ft:loraq-tiny-demo:nobody:abc"}, 404, "model"),
        ({"model": DEMO_MODEL_NAME, "messages": []}, 400, "messages"),
        ({"model": DEMO_MODEL_NAME, "messages": [{"role": "bot", "content": "hi"}]}, 400, "messages[0].role"),
        ({"model": DEMO_MODEL_NAME, "messages": [{"role": "user"}]}, 400, "messages[0].content"),
        ({"model": DEMO_MODEL_NAME, "n": 2}, 400, "n"),
        ({"model": DEMO_MODEL_NAME, "max_tokens": 100_000}, 400, "max_tokens"),
        ({"model": DEMO_MODEL_NAME, "max_completion_tokens": 513}, 400, "max_completion_tokens"),
        ({"model": DEMO_MODEL_NAME, "temperature": 3}, 400, "temperature"),
        ({"model": DEMO_MODEL_NAME, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": DEMO_MODEL_NAME, "stream": True}, 400, "stream"),
        ({"model": DEMO_MODEL_NAME, "tools": []}, 400, "tools"),
    ],
)
def test_bad_requests_name_their_field(stack: Stack, body: dict[str, Any], status: int, param: str) -> None:
    response = chat(stack, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if body.get("stream"):
        assert "stream is not supported" in error["message"]


def test_text_parts_and_stop_strings(stack: Stack) -> None:
    content = [{"type": "text", "text": "What color "}, {"type": "text", "text": "?"}]
    parts = [{"role": "user", "content": content}]
    whole = chat(stack, model=DEMO_MODEL_NAME, messages=parts, temperature=0, max_tokens=12).json()
    text = whole["choices"][0]["message"]["content"]
    assert len(text) > 2, whole
    # A stop string cuts the answer before it: the greedy answer, stopped at its second character.
    stopped = chat(stack, model=DEMO_MODEL_NAME, messages=parts, temperature=0, max_tokens=12, stop=text[1:3])
    answer = stopped.json()["choices"][0]
    assert answer["finish_reason"] == "stop" and answer["message"]["content"] == text[:1]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_chat_is_answered_while_a_long_job_trains(stack: Stack) -> None:
    with stack.client() as client:
        slow = upload(client, slow_dataset(16))["id"]
        hyperparameters = {**FAST_HYPERPARAMETERS, "n_epochs": 50, "batch_size": 1, "max_seq_len": 256}
        body = job_body(slow, adapter={"type": "lora", "r": 4}, method=method(**hyperparameters))
        path = f"/v1/fine_tuning/jobs/{create_job(client, body)['id']}"
        try:
            # Training, past its first step: the worker's only pool child is busy for minutes.
            wait_for(lambda: (client.get(path).json().get("progress") or {}).get("step"), timeout=120)
            answer = chat(stack, model=DEMO_MODEL_NAME, temperature=0)
            assert answer.status_code == 200, answer.text
            assert client.get(path).json()["status"] == "running"
        finally:
            client.post(path + "/cancel")


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_smollm2_answers_sensibly(stack: Stack) -> None:
    completion = sdk(stack).chat.completions.create(
        model=SMOLLM2_MODEL_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (completion.choices[0].message.content or ""), completion
    assert completion.choices[0].finish_reason == "stop"


# --- the request's life in the database, without processes ---------------------------------------------


def test_a_request_is_answered_once_and_then_forgotten(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    settings = Settings(home=tmp_path)
    (tmp_path / "models" / DEMO_MODEL_NAME).mkdir(parents=True)
    (tmp_path / "models" / DEMO_MODEL_NAME / "config.json").write_text("{}")
    (tmp_path / "models" / DEMO_MODEL_NAME / "model.safetensors").write_bytes(b"")
    body = ChatCompletionCreate.model_validate({"model": DEMO_MODEL_NAME, "messages": QUESTION, "stop": "x"})
    with Session(engine) as session:
        project = Project(name="chat-unit")
        session.add(project)
        session.flush()
        row = service.create_request(session, project_id=project.id, request=body, settings=settings)
        assert row.generation["max_new_tokens"] == settings.chat_max_completion_tokens
        assert row.generation["stop"] == ["x"]
        assert service.collect(session, project_id=project.id, request_id=row.id) is None  # still queued
        assert repository.claim(session, row.id) is not None
        assert repository.claim(session, row.id) is None, "a second chat process gets nothing"
        result = {"content": "hi", "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2}
        repository.finish(session, row.id, result={**result, "loraq": {}}, error=None)
        answer = service.collect(session, project_id=project.id, request_id=row.id)
        assert answer is not None and answer["usage"]["total_tokens"] == 7
        assert repository.get_request(session, project_id=project.id, request_id=row.id) is None

        # Given up on: a 503 while no chat process took it, a 504 once one had; gone either way, so a
        # late answer lands nowhere.
        queued = service.create_request(session, project_id=project.id, request=body, settings=settings)
        unanswered = service.give_up(session, project_id=project.id, request_id=queued.id, waited=5)
        assert isinstance(unanswered, ServiceUnavailable)
        assert repository.claim(session, queued.id) is None
        taken = service.create_request(session, project_id=project.id, request=body, settings=settings)
        repository.claim(session, taken.id)
        late = service.give_up(session, project_id=project.id, request_id=taken.id, waited=5)
        assert late.status_code == 504
        repository.finish(session, taken.id, result=None, error={"status": 500, "message": "late"})
        assert repository.get_request(session, project_id=project.id, request_id=taken.id) is None
    engine.dispose()
