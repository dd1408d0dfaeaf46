"""The verdict on every adapter: the base model's valid loss and answers beside the tuned adapter's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

pytest.importorskip("torch")  # an API-only install has no training stack

import torch

from loraq.jobs.spec import AdapterSpec, Hyperparameters
from tests.helpers import (
    RecordingReporter,
    bundle_files,
    chat_dataset,
    create_job,
    job_body,
    method,
    training_request,
    upload,
)
from tests.stack import Stack
from worker.training import TrainingRequest, train_adapter
from worker.training.data import as_sequences, load_tokenizer
from worker.training.evaluation import Evaluation, Verdict, base_valid_loss
from worker.training.model import load_model, pick_device
from worker.training.run import tokenized_datasets
from worker.training.trainer import ReporterBridge, build_trainer

PAIRS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")] * 4


def chat_records() -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is the capital of {country}?"},
                {"role": "assistant", "content": f"{capital}."},
            ]
        }
        for country, capital in PAIRS
    ]


def request_for(tmp_path: Path, demo_model: Path, adapter: AdapterSpec, **fields: Any) -> TrainingRequest:
    """Two epochs on the demo model, evaluated and saved every 4 steps (8 in all)."""
    hyperparameters = Hyperparameters(
        n_epochs=2, batch_size=4, learning_rate=1e-2, max_seq_len=64, save_steps=4
    )
    request = training_request(
        tmp_path,
        demo_model,
        chat_records(),
        "chat",
        hyperparameters=hyperparameters,
        adapter=adapter,
        validation=chat_records()[:6],
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def adapter_bytes(request: TrainingRequest, reporter: RecordingReporter) -> bytes:
    outcome = train_adapter(request, reporter)
    return (outcome.bundle_dir / "adapter_model.safetensors").read_bytes()


def test_a_run_measures_the_base_then_the_tuned_adapter(demo_model: Path, tmp_path: Path) -> None:
    request = request_for(tmp_path, demo_model, AdapterSpec(type="lora"), sample_max_new_tokens=8)
    reporter = RecordingReporter()
    outcome = train_adapter(request, reporter)

    assert reporter.baseline is not None
    baseline, base_samples = reporter.baseline
    assert baseline is not None and baseline["base_valid_loss"] > 0 and baseline["valid_loss"] is None
    # Without samples in the spec: the first 5 validation examples, answered by the base model.
    assert [sample["input"] for sample in base_samples] == [
        record["messages"][:1] for record in chat_records()[:5]
    ]
    references = [sample["reference"] for sample in base_samples]
    assert references == ["Paris.", "Rome.", "Madrid.", "Tokyo.", "Paris."]
    assert all(isinstance(sample["base_output"], str) for sample in base_samples)

    assert [step for step, _, _ in reporter.evaluations] == [4, 8]
    _, evaluation, samples = reporter.evaluations[-1]
    assert evaluation is not None
    assert evaluation["valid_loss"] < evaluation["base_valid_loss"] == baseline["base_valid_loss"]
    assert evaluation["improvement"] == pytest.approx(
        (evaluation["base_valid_loss"] - evaluation["valid_loss"]) / evaluation["base_valid_loss"]
    )
    assert evaluation["best_step"] in (4, 8)
    assert [sample["index"] for sample in samples] == list(range(5))
    assert [sample["base_output"] for sample in samples] == [sample["base_output"] for sample in base_samples]

    # Every checkpoint's metrics, and the bundle, carry the base's valid loss too.
    base_loss = baseline["base_valid_loss"]
    assert all(metrics["base_valid_loss"] == base_loss for _, _, metrics in reporter.checkpoints)
    lines = (outcome.bundle_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"evaluation": evaluation}
    bundle_samples = [json.loads(line) for line in (outcome.bundle_dir / "samples.jsonl").open()]
    assert bundle_samples == [{"step": 8, **sample} for sample in samples]


def test_the_base_loss_is_the_trainers_own_eval_loss(demo_model: Path, tmp_path: Path) -> None:
    # A fresh LoRA adapter adds nothing (B = 0): the Trainer's evaluation of it is the base's.
    request = request_for(tmp_path, demo_model, AdapterSpec(type="lora"))
    tokenizer = load_tokenizer(demo_model, "chat")
    train, validation = tokenized_datasets(request, tokenizer)
    assert validation is not None
    device = pick_device()
    loaded = load_model(demo_model, request.adapter, device)
    trainer = build_trainer(
        model=loaded.model,
        tokenizer=tokenizer,
        train=as_sequences(train, packing=False, max_seq_len=64),
        validation=validation,
        hyperparameters=request.hyperparameters,
        seed=request.seed,
        output_dir=tmp_path / "checkpoints",
        device=device,
        compute_dtype=loaded.compute_dtype,
        bridge=ReporterBridge(RecordingReporter()),
    )
    assert base_valid_loss(trainer, loaded.model, validation) == pytest.approx(
        trainer.evaluate()["eval_loss"], rel=1e-6
    )


@pytest.mark.parametrize("adapter_type", ["lora", "qlora"])
def test_measuring_and_answering_leave_the_adapter_byte_identical(
    demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter_type: str
) -> None:
    adapter = AdapterSpec(type=adapter_type)  # type: ignore[arg-type]
    with_verdict = adapter_bytes(
        request_for(tmp_path / "with", demo_model, adapter, sample_max_new_tokens=4), RecordingReporter()
    )
    monkeypatch.setattr(Verdict, "measure_base", lambda self, trainer, validation: None)
    monkeypatch.setattr(Verdict, "_report_tuned", lambda self, step: self.answered.setdefault(step, []))
    reporter = RecordingReporter()
    without = adapter_bytes(request_for(tmp_path / "without", demo_model, adapter), reporter)
    assert reporter.baseline is None
    assert with_verdict == without


def test_a_resumed_job_keeps_the_base_measured_by_an_earlier_attempt(
    demo_model: Path, tmp_path: Path
) -> None:
    recorded = Evaluation(base_valid_loss=12.5).record()
    base_samples = [{"input": "Capital of France:", "reference": None, "base_output": "earlier"}]
    request = request_for(
        tmp_path,
        demo_model,
        AdapterSpec(type="lora"),
        samples=[{"prompt": "Capital of France:"}],
        sample_max_new_tokens=4,
        evaluation=recorded,
        base_samples=base_samples,
    )
    reporter = RecordingReporter()
    train_adapter(request, reporter)
    assert reporter.baseline is None  # not measured again
    _, evaluation, samples = reporter.evaluations[-1]
    assert evaluation is not None and evaluation["base_valid_loss"] == 12.5
    answers = [(sample["input"], sample["base_output"]) for sample in samples]
    assert answers == [("Capital of France:", "earlier")]
    assert all(metrics["base_valid_loss"] == 12.5 for _, _, metrics in reporter.checkpoints)


def test_samples_without_validation_data_are_answered_at_the_end(demo_model: Path, tmp_path: Path) -> None:
    request = request_for(
        tmp_path, demo_model, AdapterSpec(type="lora"), samples=[{"prompt": "Hello"}], sample_max_new_tokens=4
    )
    request.validation_path = None
    reporter = RecordingReporter()
    outcome = train_adapter(request, reporter)
    assert reporter.baseline is not None and reporter.baseline[0] is None  # no evaluation object
    assert [(step, evaluation) for step, evaluation, _ in reporter.evaluations] == [(8, None)]
    assert not any("evaluation" in json.loads(line) for line in (outcome.bundle_dir / "metrics.jsonl").open())


def test_greedy_answers_decode_only_the_new_tokens(demo_model: Path) -> None:
    from loraq.tokens.encoding import tokenizer_of
    from worker.training.samples import generate_answers, sample_input

    loaded = load_model(demo_model, AdapterSpec(type="lora"), pick_device())
    tokenizer = load_tokenizer(demo_model, "chat")
    sample = sample_input({"prompt": "The capital of Italy is"}, tokenizer_of(demo_model))
    loaded.model.train()
    first = generate_answers(loaded.model, tokenizer, [sample], max_new_tokens=6)
    assert loaded.model.training  # back in train mode
    again = generate_answers(loaded.model, tokenizer, [sample], max_new_tokens=6, base=True)
    assert first == again  # greedy, and a fresh adapter (B = 0) changes nothing
    assert not first[0].startswith("The capital of Italy")
    state = torch.random.get_rng_state()
    generate_answers(loaded.model, tokenizer, [sample], max_new_tokens=2)
    assert torch.equal(state, torch.random.get_rng_state())


# --- the API ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "param"),
    [
        ([{"prompt": "hi"}] * 21, "samples"),
        (
            [{"prompt": "hi"}, {"prompt": "hi"}, {"prompt": "hi"}, {"messages": [{"role": "robot"}]}],
            "samples[3].messages[0].role",
        ),
        ([{"messages": [{"role": "assistant", "content": "alone"}]}], "samples[0].messages"),
        ([{"prompt": "hi", "answer": "x"}], "samples[0].answer"),
        ([{"prompt": ""}], "samples[0].prompt"),
    ],
)
def test_bad_samples_are_refused_naming_the_field(
    stack: Stack, samples: list[dict[str, Any]], param: str
) -> None:
    client = stack.client()
    training = upload(client, chat_dataset(8))
    response = client.post("/v1/fine_tuning/jobs", json=job_body(training["id"], samples=samples))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()


def test_a_job_shows_its_evaluation_and_samples(stack: Stack) -> None:
    client = stack.client()
    training = upload(client, chat_dataset(16))
    body = job_body(
        training["id"],
        method=method(n_epochs=2, batch_size=4, learning_rate=5e-3, max_seq_len=64, validation_split=0.25),
        adapter={"type": "lora"},
        samples=[
            {"messages": [{"role": "user", "content": "What color is item 3?"}]},
            {"prompt": "Item 4 is", "completion": " blue"},
        ],
        sample_max_new_tokens=5,
    )
    job = create_job(client, body)
    assert job["evaluation"] is None and job["sample_max_new_tokens"] == 5
    assert job["samples"] == body["samples"]
    done = stack.wait_for_success(job["id"])
    evaluation = done["evaluation"]
    assert evaluation["base_valid_loss"] > evaluation["valid_loss"] and evaluation["improvement"] > 0
    listed = client.get(f"/v1/fine_tuning/jobs/{job['id']}/samples").json()
    # The latest step first, its answers in input order.
    assert [(row["step"], row["index"]) for row in listed["data"][:2]] == [(6, 0), (6, 1)]
    first = listed["data"][0]
    assert first["object"] == "fine_tuning.job.sample"
    assert first["input"] == body["samples"][0]["messages"] and first["reference"] is None
    assert listed["data"][1]["input"] == "Item 4 is" and listed["data"][1]["reference"] == " blue"
    assert {row["step"] for row in listed["data"]} == {3, 6}  # evaluated each epoch (of 3 steps)
    assert all(isinstance(row["output"], str) for row in listed["data"])
    files = bundle_files(client, done["result_files"][0])
    bundle_samples = [json.loads(line) for line in files["samples.jsonl"].decode().splitlines()]
    assert [row["index"] for row in bundle_samples] == [0, 1]
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert all(c["metrics"]["base_valid_loss"] == evaluation["base_valid_loss"] for c in checkpoints)
