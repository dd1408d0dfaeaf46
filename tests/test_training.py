"""The training engine end to end on the tiny demo model: real tokenizer, real Trainer, real bitsandbytes."""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import by huggingface_hub: tests never go online

import pytest

pytest.importorskip("torch")  # an API-only install has no training stack

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from loraq.jobs.spec import AdapterSpec, Hyperparameters, Quantization, held_out_indices
from loraq.storage.archives import pack_dir
from tests.helpers import (
    BUNDLE_FILES,
    RecordingReporter,
    job_create,
    method,
    read_manifest,
    training_request,
    write_jsonl,
)
from worker.training import TrainingOutcome, TrainingRequest, TrainingStopped, train_adapter
from worker.training import trainer as trainer_module
from worker.training.data import as_sequences, data_collator, load_dataset, load_tokenizer
from worker.training.model import load_model, pick_device
from worker.training.run import tokenized_datasets
from worker.training.trainer import TokenAccuracy

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")] * 4


def chat_records() -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": f"What is the capital of {country}?"},
                {"role": "assistant", "content": f"{capital}."},
            ]
        }
        for country, capital in CAPITALS
    ]


def make_request(
    tmp_path: Path,
    demo_model: Path,
    records: list[dict[str, Any]],
    dataset_format: str,
    adapter: AdapterSpec,
    *,
    validation: list[dict[str, Any]] | None = None,
    merged: bool = False,
    **hyperparameters: Any,
) -> TrainingRequest:
    """A short run: 3 epochs of batches of 4 at a high learning rate, unless hyperparameters say otherwise."""
    settings = {"n_epochs": 3, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64} | hyperparameters
    return training_request(
        tmp_path,
        demo_model,
        records,
        dataset_format,
        hyperparameters=Hyperparameters(**settings),
        adapter=adapter,
        validation=validation,
        merged=merged,
    )


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


QloraRun = tuple[TrainingOutcome, RecordingReporter]


@pytest.fixture(scope="module")
def qlora_run(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> QloraRun:
    nf4 = Quantization(bits=4, quant_type="nf4", double_quant=True)
    adapter = AdapterSpec(type="qlora", quantization=nf4)
    request = make_request(
        tmp_path_factory.mktemp("qlora"), demo_model, chat_records(), "chat", adapter, merged=True
    )
    reporter = RecordingReporter()
    return train_adapter(request, reporter), reporter


def test_qlora_training_lowers_the_loss_on_a_4bit_base(qlora_run: QloraRun) -> None:
    outcome, reporter = qlora_run
    losses = reporter.train_losses()
    manifest = read_manifest(outcome.bundle_dir)
    assert manifest["steps"] == 12 and len(losses) == 12
    assert losses[-1] < losses[0] * 0.7
    quantized = manifest["quantized_base"]
    assert quantized["linear_layer_types"]["Linear4bit"] == quantized["quantized_linear_layers"] == 14
    assert (quantized["bits"], quantized["quant_type"], quantized["double_quant"]) == (4, "nf4", True)
    assert manifest["trained_tokens"] == outcome.trained_tokens > 0
    last = reporter.progress[-1]
    assert last["step"] == last["total_steps"] == 12 and last["tokens_per_second"] > 0


def test_qlora_bundle_loads_with_peft_and_changes_the_base(qlora_run: QloraRun, demo_model: Path) -> None:
    outcome, _ = qlora_run
    bundle = outcome.bundle_dir
    assert {path.name for path in bundle.iterdir()} >= BUNDLE_FILES
    assert read_json(bundle / "adapter_config.json")["base_model_name_or_path"] == "loraq-tiny-demo"
    assert read_json(bundle / "training_args.json")["adapter"]["type"] == "qlora"
    metrics_lines = (bundle / "metrics.jsonl").read_text().splitlines()
    assert sum("loss" in json.loads(line) for line in metrics_lines) == read_manifest(bundle)["steps"]
    input_ids = torch.tensor([load_tokenizer(demo_model, "chat")("The capital of Italy is")["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    before = logits(base, input_ids)
    adapted = PeftModel.from_pretrained(base, bundle)
    assert not torch.allclose(before, logits(adapted, input_ids), atol=1e-4)


def test_the_model_cards_snippet_loads_the_adapter(qlora_run: QloraRun, demo_model: Path) -> None:
    bundle = qlora_run[0].bundle_dir
    [snippet] = re.findall(r"```python\n(.*?)```", (bundle / "README.md").read_text(), flags=re.DOTALL)
    # A local base is named by where its reader copied it: the two placeholders the card asks to fill.
    assert '"path/to/loraq-tiny-demo"' in snippet and "$LORAQ_HOME/models/loraq-tiny-demo" in snippet
    filled = snippet.replace('"path/to/loraq-tiny-demo"', repr(str(demo_model)))
    filled = filled.replace('"path/to/this/bundle"', repr(str(bundle)))
    namespace: dict[str, Any] = {}
    exec(filled, namespace)  # the reader's code, as the card prints it
    assert isinstance(namespace["model"], PeftModel)


def test_pack_dir_is_reproducible_with_files_at_the_root(qlora_run: QloraRun, tmp_path: Path) -> None:
    bundle = qlora_run[0].bundle_dir
    first, second = (pack_dir(bundle, tmp_path / name) for name in ("a.tar.gz", "b.tar.gz"))
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        names = tar.getnames()
        assert names == sorted(names) and set(names) >= BUNDLE_FILES
        assert {(member.mtime, member.uid, member.gid) for member in tar.getmembers()} == {(0, 0, 0)}


def prompt_completion_request(tmp_path: Path, demo_model: Path) -> TrainingRequest:
    records = [{"prompt": f"Capital of {land}:", "completion": f" {capital}."} for land, capital in CAPITALS]
    adapter = AdapterSpec(type="lora", target_modules="all-linear")
    return make_request(
        tmp_path, demo_model, records, "prompt_completion", adapter, validation=records[:4], save_steps=6
    )


def adapter_weights(outcome: TrainingOutcome) -> dict[str, torch.Tensor]:
    return load_file(outcome.bundle_dir / "adapter_model.safetensors")


def test_lora_on_prompt_completion_evaluates_checkpoints_and_resumes_exactly(
    demo_model: Path, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    outcome = train_adapter(prompt_completion_request(tmp_path / "whole", demo_model), reporter)
    losses = reporter.train_losses()
    assert losses[-1] < losses[0]
    assert [step for step, _, _ in reporter.checkpoints] == [6, 12]
    manifest = read_manifest(outcome.bundle_dir)
    assert manifest["metrics"]["eval_loss"] < reporter.checkpoints[0][2]["valid_loss"]
    assert reporter.progress[-1]["valid_loss"] == manifest["metrics"]["eval_loss"]
    assert manifest["quantized_base"]["quantized_linear_layers"] == 0
    assert manifest["dataset"]["validation_sha256"] is not None

    # Interrupted after step 7, then resumed from the step-6 checkpoint: the same adapter, bit for bit.
    interrupted = prompt_completion_request(tmp_path / "interrupted", demo_model)
    first_half = RecordingReporter(stop_after=7)
    with pytest.raises(TrainingStopped):
        train_adapter(interrupted, first_half)
    [(step, checkpoint, _)] = first_half.checkpoints
    assert step == 6
    interrupted.resume_from = checkpoint
    resumed = train_adapter(interrupted, RecordingReporter())
    assert read_manifest(resumed.bundle_dir)["steps"] == manifest["steps"]
    expected, actual = adapter_weights(outcome), adapter_weights(resumed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_an_evaluation_leaves_qlora_gradients_unchanged(demo_model: Path) -> None:
    # bitsandbytes would otherwise repack 4-bit weights for CPU inference, losing their backward.
    model = load_model(demo_model, AdapterSpec(type="qlora", dropout=0.0), pick_device()).model
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # non-zero B, so that gradients reach every lora_A
            torch.nn.init.normal_(parameter, std=0.1)
    input_ids = torch.randint(3, 900, (2, 16), generator=torch.Generator().manual_seed(0))

    def gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    before = gradients()
    model.eval()
    logits(model, input_ids)
    after = gradients()
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)


def test_qlora_8bit_on_plain_text_with_a_cosine_warmup(demo_model: Path, tmp_path: Path) -> None:
    records = [{"text": f"The capital of {land} is {capital}."} for land, capital in CAPITALS]
    adapter = AdapterSpec(type="qlora", quantization=Quantization(bits=8))
    request = make_request(
        tmp_path, demo_model, records, "text", adapter, lr_scheduler="cosine", warmup_ratio=0.25
    )
    reporter = RecordingReporter()
    outcome = train_adapter(request, reporter)
    assert reporter.train_losses()[-1] < reporter.train_losses()[0]
    learning_rates = [logged["learning_rate"] for _, logged in reporter.metrics if "learning_rate" in logged]
    assert learning_rates[0] < learning_rates[2] and learning_rates[-1] < learning_rates[2]
    quantized = read_manifest(outcome.bundle_dir)["quantized_base"]
    assert quantized["linear_layer_types"]["Linear8bitLt"] == quantized["quantized_linear_layers"] == 14
    assert quantized["bits"] == 8


def test_should_stop_raises_training_stopped_within_one_step(demo_model: Path, tmp_path: Path) -> None:
    request = make_request(tmp_path, demo_model, chat_records(), "chat", AdapterSpec(type="lora"))
    reporter = RecordingReporter(stop_after=2)
    with pytest.raises(TrainingStopped):
        train_adapter(request, reporter)
    assert reporter.stop_checks == 2
    assert max(step for step, _ in reporter.metrics) <= 2
    assert not (request.output_dir / "adapter").exists()


def test_chat_labels_cover_only_weighted_assistant_turns(demo_model: Path, tmp_path: Path) -> None:
    record = {
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris.", "weight": 0},
            {"role": "user", "content": "And Italy? <|im_end|>"},
            {"role": "assistant", "content": "Rome."},
        ]
    }
    path = write_jsonl(tmp_path / "chat.jsonl", [record])
    tokenizer = load_tokenizer(demo_model, "chat")

    def trained_text(train_on_inputs: bool) -> str:
        dataset = load_dataset(path, "chat", tokenizer, max_seq_len=256, train_on_inputs=train_on_inputs)
        example = dataset[0]
        pairs = zip(example["input_ids"], example["labels"], strict=True)
        trained = [token for token, label in pairs if label != -100]
        return str(tokenizer.decode(trained))

    assert trained_text(train_on_inputs=False) == "Rome.<|im_end|>\n"
    everything = trained_text(train_on_inputs=True)
    assert "You answer in one word." in everything and "Paris." in everything


def test_truncation_counts_and_drops_examples_left_without_labels(demo_model: Path, tmp_path: Path) -> None:
    long_prompt = {"prompt": "word " * 100, "completion": "Yes."}
    short = {"prompt": "Hi", "completion": "Hello there."}
    path = write_jsonl(tmp_path / "pc.jsonl", [long_prompt, short])
    tokenizer = load_tokenizer(demo_model, "prompt_completion")
    dataset = load_dataset(path, "prompt_completion", tokenizer, max_seq_len=32, train_on_inputs=False)
    assert (dataset.examples, len(dataset), dataset.truncated, dataset.dropped) == (2, 1, 1, 1)
    assert dataset[0]["labels"][-1] == tokenizer.eos_token_id


# --- packing ---------------------------------------------------------------------------------------------


def test_packed_examples_do_not_attend_to_each_other(demo_model: Path, tmp_path: Path) -> None:
    texts = ["The capital of France is Paris.", "Two plus two is four.", "The sea is blue and wide."]
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": text} for text in texts])
    tokenizer = load_tokenizer(demo_model, "text")
    first, second, third = load_dataset(
        path, "text", tokenizer, max_seq_len=64, train_on_inputs=False
    ).input_ids
    # Room for the first two examples only: the third gets a sequence of its own, padded in a batch.
    capacity = len(first) + len(second)
    dataset = load_dataset(path, "text", tokenizer, max_seq_len=capacity, train_on_inputs=False)
    packed = as_sequences(dataset, packing=True, max_seq_len=capacity)
    assert sorted(packed.packs) == [[0, 1], [2]]  # type: ignore[union-attr]
    pair, single = (packed[packed.packs.index(pack)] for pack in ([0, 1], [2]))  # type: ignore[union-attr]
    batch = data_collator(packed, tokenizer.pad_token_id)([pair, single])
    assert "attention_mask" not in batch
    batch.pop("labels")
    model = load_model(demo_model, AdapterSpec(type="lora", dropout=0.0), pick_device()).model.eval()
    with torch.no_grad():
        rows = model(**batch).logits
    alone = [logits(model, torch.tensor([ids]))[0] for ids in (first, second, third)]
    assert torch.allclose(rows[0, : len(first)], alone[0], atol=1e-5)
    assert torch.allclose(rows[0, len(first) : len(first) + len(second)], alone[1], atol=1e-5)
    assert torch.allclose(rows[1, : len(third)], alone[2], atol=1e-5)
    # The check can fail: without position_ids the second example does see the first.
    concatenated = logits(model, torch.tensor([first + second]))[0, len(first) :]
    assert not torch.allclose(concatenated, alone[1], atol=1e-2)


def test_packing_trains_on_fewer_sequences_and_counts_every_token(demo_model: Path, tmp_path: Path) -> None:
    records = chat_records()  # about 40 tokens each: three fit in 128
    request = make_request(
        tmp_path, demo_model, records, "chat", AdapterSpec(type="lora"), packing=True, max_seq_len=128
    )
    reporter = RecordingReporter()
    outcome = train_adapter(request, reporter)
    manifest = read_manifest(outcome.bundle_dir)
    dataset = manifest["dataset"]
    assert dataset["kept"] == 16 and dataset["sequences"] < 8
    assert dataset["packing"]["fill_ratio"] > 0.6
    assert manifest["steps"] == 3 * math.ceil(dataset["sequences"] / 4) < 12
    assert outcome.trained_tokens == 3 * dataset["tokens"]  # padding is not counted, packed tokens are
    assert reporter.train_losses()[-1] < reporter.train_losses()[0]
    assert "Packed into" in (outcome.bundle_dir / "README.md").read_text()


# --- validation split and early stopping ------------------------------------------------------------------


def test_validation_split_holds_out_a_seeded_fraction(demo_model: Path, tmp_path: Path) -> None:
    held_out = held_out_indices(16, 0.25, seed=7)
    assert len(held_out) == 4 and held_out == held_out_indices(16, 0.25, seed=7)
    assert held_out != held_out_indices(16, 0.25, seed=8)
    records = chat_records()
    request = make_request(
        tmp_path, demo_model, records, "chat", AdapterSpec(type="lora"), validation_split=0.25
    )
    train, validation = tokenized_datasets(request, load_tokenizer(demo_model, "chat"))
    assert validation is not None and (len(train), len(validation)) == (12, 4)
    expected = [
        load_dataset(
            write_jsonl(tmp_path / f"{i}.jsonl", [records[i]]),
            "chat",
            load_tokenizer(demo_model, "chat"),
            max_seq_len=64,
            train_on_inputs=False,
        ).input_ids[0]
        for i in sorted(held_out)
    ]
    assert validation.input_ids == expected


def test_early_stopping_keeps_the_best_adapter(demo_model: Path, tmp_path: Path) -> None:
    # Validation answers that training never teaches: their loss falls with the format, then rises.
    train = [{"prompt": f"Capital of {land}:", "completion": f" {capital}."} for land, capital in CAPITALS]
    unrelated = [
        {"prompt": f"Capital of {land}:", "completion": " purple elephant"} for land, _ in CAPITALS[:4]
    ]
    request = make_request(
        tmp_path,
        demo_model,
        train,
        "prompt_completion",
        AdapterSpec(type="lora"),
        validation=unrelated,
        n_epochs=5,
        save_steps=1,
        early_stopping_patience=1,
    )
    reporter = RecordingReporter()
    manifest = read_manifest(train_adapter(request, reporter).bundle_dir)
    valid_losses = [metrics["valid_loss"] for _, metrics in reporter.metrics if "valid_loss" in metrics]
    assert valid_losses[-2] > min(valid_losses[:-1])  # the last evaluation before the final one got worse
    # Stopped before 5 epochs of 4 steps.
    assert manifest["best_eval_step"] < manifest["steps"] < manifest["total_steps"] == 20
    # The exported adapter is the best checkpoint's, evaluated once more.
    metrics = manifest["metrics"]
    assert metrics["eval_loss"] == pytest.approx(min(valid_losses), abs=1e-5)
    assert 0 <= metrics["eval_mean_token_accuracy"] <= 1
    assert 0 <= metrics["train_mean_token_accuracy"] <= 1
    assert all("valid_mean_token_accuracy" in metrics for _, _, metrics in reporter.checkpoints)


def test_token_accuracy_counts_next_token_predictions_on_labels_only() -> None:
    accuracy = TokenAccuracy()
    labels = torch.tensor([[5, 6, 7, -100], [1, -100, 3, 4]])
    predicted = torch.tensor([[6, 0, 9, 9], [9, 9, 4, 9]])  # position t predicts label t + 1
    accuracy.add(predicted, labels)
    assert accuracy.pop() == pytest.approx(2 / 4)
    assert accuracy.pop() is None


# --- adapter variants, checkpointing, merged export, progress ----------------------------------------------


def test_rslora_and_dora_reach_the_adapter_config(demo_model: Path, tmp_path: Path) -> None:
    adapter = AdapterSpec(type="qlora", use_rslora=True, use_dora=True)
    request = make_request(tmp_path, demo_model, chat_records(), "chat", adapter, n_epochs=1)
    outcome = train_adapter(request, RecordingReporter())
    config = read_json(outcome.bundle_dir / "adapter_config.json")
    assert config["use_rslora"] is True and config["use_dora"] is True
    assert any("lora_magnitude_vector" in name for name in adapter_weights(outcome))


def test_gradient_checkpointing_trains_the_same_adapter(demo_model: Path, tmp_path: Path) -> None:
    def train(checkpointing: bool) -> TrainingOutcome:
        request = make_request(
            tmp_path / str(checkpointing),
            demo_model,
            chat_records(),
            "chat",
            AdapterSpec(type="lora"),
            n_epochs=1,
            gradient_checkpointing=checkpointing,
        )
        return train_adapter(request, RecordingReporter())

    plain, checkpointed = train(False), train(True)
    assert read_manifest(checkpointed.bundle_dir)["gradient_checkpointing"] is True
    assert read_manifest(plain.bundle_dir)["gradient_checkpointing"] is False
    expected, actual = adapter_weights(plain), adapter_weights(checkpointed)
    assert all(torch.allclose(expected[name], actual[name], atol=1e-6) for name in expected)


def test_merged_export_equals_the_adapter_on_the_full_precision_base(
    qlora_run: QloraRun, demo_model: Path
) -> None:
    outcome, _ = qlora_run
    assert outcome.merged_dir is not None
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in outcome.merged_dir.iterdir()
    }
    assert not list(outcome.merged_dir.glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(outcome.merged_dir, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    input_ids = torch.tensor([load_tokenizer(demo_model, "chat")("The capital of Italy is")["input_ids"]])
    before = logits(base, input_ids)
    adapted = logits(PeftModel.from_pretrained(base, outcome.bundle_dir), input_ids)
    assert torch.allclose(logits(merged, input_ids), adapted, atol=1e-4)
    assert not torch.allclose(before, adapted, atol=1e-3)


def test_progress_is_refreshed_between_logs_and_during_evaluation(
    demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "PROGRESS_INTERVAL_SECONDS", 0.0)  # every chance to report is due
    records = [{"prompt": f"Capital of {land}:", "completion": f" {capital}."} for land, capital in CAPITALS]
    request = make_request(
        tmp_path,
        demo_model,
        records,
        "prompt_completion",
        AdapterSpec(type="lora"),
        validation=records[:8],
        n_epochs=1,
        logging_steps=1000,
        gradient_accumulation_steps=2,
        batch_size=2,
    )
    reporter = RecordingReporter()
    train_adapter(request, reporter)
    steps = [progress["step"] for progress in reporter.progress]
    assert set(range(5)) <= set(steps)  # each step, though only the first one logs
    assert len(steps) > 2 * 4 + 4  # two accumulated batches a step, and four evaluation batches


# --- the spec's new rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"validation_file": "file-2", "method": method(validation_split=0.1)}, "not both"),
        ({"method": method(early_stopping_patience=2)}, "needs a validation_file or a validation_split"),
        ({"method": method(eval_steps=5)}, "needs a validation_file or a validation_split"),
        (
            {
                "validation_file": "file-2",
                "method": method(early_stopping_patience=2, eval_steps=3, save_steps=10),
            },
            "multiple of eval_steps",
        ),
        (
            {"validation_file": "file-2", "method": method(early_stopping_patience=2, eval_steps=3)},
            "multiple of eval_steps",
        ),
        ({"method": method(validation_split=0.6)}, "less than or equal to 0.5"),
        ({"method": method(validation_split=0)}, "greater than 0"),
        ({"export": {"merged": True, "format": "gguf"}}, "Extra inputs are not permitted"),
        ({"adapter": {"type": "qlora", "use_dora": True, "quantization": {"bits": 8}}}, "8-bit base"),
    ],
)
def test_the_spec_rejects_impossible_combinations(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        job_create(**body)


def test_the_spec_resolves_the_new_fields() -> None:
    request = job_create(
        validation_file="file-2",
        export={"merged": True},
        adapter={"type": "lora", "use_dora": True},
        method=method(early_stopping_patience=2, eval_steps=5, save_steps=10, packing=True),
    )
    assert request.export.merged and request.adapter.use_dora and not request.adapter.use_rslora
    resolved = request.requested_hyperparameters.resolve(n_examples=64)
    assert (resolved.eval_steps, resolved.packing, resolved.gradient_checkpointing) == (5, True, False)
    # "auto" sizes come from the examples left for training: 48 of 64 with a quarter held out.
    assert Hyperparameters(validation_split=0.25).resolve(n_examples=64).batch_size == 48 // 32
    # Without eval_steps, evaluations come with the checkpoints.
    assert Hyperparameters(save_steps=7).resolve(n_examples=64).eval_steps == 7
