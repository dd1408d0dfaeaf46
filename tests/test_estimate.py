"""The job estimate (pure Python) against what the training engine really does on the demo model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import by huggingface_hub: tests never go online

import pytest

pytest.importorskip("torch")  # the comparisons run the real tokenizer, model and peft

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from loraq.jobs.estimate import (
    Architecture,
    base_weight_bytes,
    chat_template,
    estimate_job,
    four_bit_bytes_per_weight,
    lora_parameter_count,
)
from loraq.jobs.spec import AdapterSpec, JobCreate, Quantization
from loraq.tokens.chat_template import CHATML_TEMPLATE
from tests.helpers import RecordingReporter, job_create, method, read_manifest, training_request, write_jsonl
from worker.training import train_adapter
from worker.training.data import load_dataset, load_tokenizer

COUNTRIES = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Peru", "Lima"),
]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)  # longer than max_seq_len

RECORDS: dict[str, list[dict[str, Any]]] = {
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": f"What is the capital of {land}?"},
                {"role": "assistant", "content": f"{capital}.", "weight": 1},
            ]
        }
        for land, capital in COUNTRIES
    ]
    + [
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
                    ],
                },
                {"role": "tool", "content": "sunny, 21°C"},
                {"role": "assistant", "content": LONG},
            ]
        }
    ],
    "prompt_completion": [
        {"prompt": f"Capital of {land}:", "completion": f" {capital}."} for land, capital in COUNTRIES
    ]
    + [{"prompt": "Tell me a story.", "completion": LONG}],
    "text": [{"text": f"The capital of {land} is {capital}."} for land, capital in COUNTRIES]
    + [{"text": LONG}],
}

# Llama 2 7B's shape (config.json as published): the memory ordering is checked on a real-sized model.
LLAMA_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "tie_word_embeddings": False,
}


def job(adapter: dict[str, Any] | None = None, **hyperparameters: Any) -> JobCreate:
    return job_create(seed=7, adapter=adapter or {"type": "lora"}, method=method(**hyperparameters))


@pytest.mark.parametrize("dataset_format", ["chat", "prompt_completion", "text"])
def test_the_estimate_counts_tokens_as_training_does(
    dataset_format: str, demo_model: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS[dataset_format])
    request = job(max_seq_len=48, batch_size=2, n_epochs=3)
    estimate = estimate_job(
        request=request, train_path=path, dataset_format=dataset_format, model_dir=demo_model
    )
    tokenizer = load_tokenizer(demo_model, dataset_format)
    dataset = load_dataset(path, dataset_format, tokenizer, max_seq_len=48, train_on_inputs=False)
    untruncated = load_dataset(path, dataset_format, tokenizer, max_seq_len=10_000, train_on_inputs=False)
    assert (estimate["examples"], estimate["train_tokens"]) == (dataset.examples, dataset.tokens)
    assert estimate["truncated_examples"] == dataset.truncated == 1
    assert estimate["token_lengths"]["max"] == max(len(ids) for ids in untruncated.input_ids) > 48
    assert estimate["sequences"] == 6 and estimate["total_steps"] == 3 * 3
    assert estimate["trained_tokens"] == 3 * dataset.tokens
    memory = estimate["memory_bytes"]
    assert memory["total"] == sum(value for name, value in memory.items() if name != "total")
    assert estimate["compute_dtype"] == "bfloat16"  # "auto" on the GPU the estimate assumes


def test_the_estimated_steps_are_the_steps_training_takes(demo_model: Path, tmp_path: Path) -> None:
    request = job(
        max_seq_len=96,
        batch_size=2,
        gradient_accumulation_steps=2,
        n_epochs=2,
        packing=True,
        validation_split=0.2,
    )
    training = training_request(
        tmp_path,
        demo_model,
        RECORDS["chat"] * 3,
        "chat",
        hyperparameters=request.requested_hyperparameters,
        adapter=request.adapter,
    )
    estimate = estimate_job(
        request=request, train_path=training.train_path, dataset_format="chat", model_dir=demo_model
    )
    outcome = train_adapter(training, RecordingReporter())
    manifest = read_manifest(outcome.bundle_dir)
    assert (estimate["train_examples"], estimate["validation_examples"]) == (14, 4)
    assert estimate["sequences"] == manifest["dataset"]["sequences"] < estimate["train_examples"]
    assert estimate["total_steps"] == manifest["steps"]
    assert estimate["trained_tokens"] == outcome.trained_tokens


def test_packing_needs_fewer_sequences_for_short_examples(demo_model: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS["text"][:5] * 8)

    def estimate(packing: bool) -> dict[str, Any]:
        request = job(max_seq_len=64, batch_size=4, n_epochs=1, packing=packing)
        return estimate_job(request=request, train_path=path, dataset_format="text", model_dir=demo_model)

    unpacked, packed = estimate(False), estimate(True)
    assert unpacked["sequences"] == 40 and packed["sequences"] <= 40 // 5
    assert packed["total_steps"] < unpacked["total_steps"]
    assert packed["train_tokens"] == unpacked["train_tokens"]


def test_parameters_counted_from_config_are_the_models(demo_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    assert Architecture.from_model_dir(demo_model).parameter_count() == model.num_parameters()
    # Tied embeddings, biases and a head_dim of its own change the count the same way in both.
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
    )
    assert (
        Architecture.from_config(config.to_dict()).parameter_count()
        == LlamaForCausalLM(config).num_parameters()
    )


@pytest.mark.parametrize(
    "adapter",
    [
        AdapterSpec(type="lora"),
        AdapterSpec(type="lora", r=4, target_modules="all-linear", use_dora=True),
        AdapterSpec(type="lora", r=2, target_modules=["self_attn.q_proj", "down_proj", "no_such_layer"]),
    ],
)
def test_lora_parameters_are_the_ones_peft_trains(adapter: AdapterSpec, demo_model: Path) -> None:
    targets = adapter.target_modules
    if isinstance(targets, list):  # peft refuses names that match nothing; the estimate ignores them
        targets = [name for name in targets if name != "no_such_layer"]
    config = LoraConfig(r=adapter.r, target_modules=targets, use_dora=adapter.use_dora, task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(demo_model), config)
    trainable, _ = model.get_nb_trainable_parameters()
    assert lora_parameter_count(Architecture.from_model_dir(demo_model), adapter) == trainable


def test_the_base_takes_less_memory_at_lower_precision() -> None:
    arch = Architecture.from_config(LLAMA_7B)
    assert arch.parameter_count() == 6_738_415_616  # Llama 2 7B's published count
    nf4, int8 = Quantization(bits=4), Quantization(bits=8)
    sizes = [
        base_weight_bytes(arch, nf4, "bfloat16"),
        base_weight_bytes(arch, int8, "bfloat16"),
        base_weight_bytes(arch, None, "bfloat16"),
        base_weight_bytes(arch, None, "float32"),
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert four_bit_bytes_per_weight(double_quant=True) * 8 == pytest.approx(4.127, abs=1e-3)
    assert four_bit_bytes_per_weight(double_quant=False) * 8 == 4.5
    assert base_weight_bytes(arch, Quantization(bits=4, double_quant=False), "bfloat16") > sizes[0]


def test_gradient_checkpointing_and_quantization_lower_the_estimate(demo_model: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS["text"])

    def memory(adapter: dict[str, Any] | None = None, **hyperparameters: Any) -> dict[str, int]:
        request = job(adapter, max_seq_len=64, batch_size=4, **hyperparameters)
        estimate = estimate_job(request=request, train_path=path, dataset_format="text", model_dir=demo_model)
        result: dict[str, int] = estimate["memory_bytes"]
        return result

    plain = memory()
    assert memory(gradient_checkpointing=True)["activations"] < plain["activations"]
    assert memory({"type": "lora", "target_modules": "all-linear"})["adapter"] > plain["adapter"]
    # 4-bit quantization shrinks the linear layers only: on this embedding-heavy toy model the
    # fp32 embeddings (upcast for QLoRA) outweigh what it saves over bf16.
    qlora = memory({"type": "qlora", "quantization": {"bits": 4, "compute_dtype": "float32"}})
    fp32 = memory({"type": "lora", "compute_dtype": "float32"})
    assert qlora["base_weights"] < fp32["base_weights"]


def test_the_chat_template_falls_back_to_chatml(tmp_path: Path, demo_model: Path) -> None:
    assert chat_template(tmp_path, {}) == CHATML_TEMPLATE
    assert (
        chat_template(tmp_path, {"chat_template": [{"name": "default", "template": "{{ 1 }}"}]}) == "{{ 1 }}"
    )
    assert chat_template(demo_model, {}) == (demo_model / "chat_template.jinja").read_text()


def test_a_cpu_estimate_counts_the_process_and_auto_is_float32(demo_model: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS["text"])

    def memory(adapter: dict[str, Any] | None = None) -> dict[str, int]:
        estimate = estimate_job(
            request=job(adapter, max_seq_len=64, batch_size=4),
            train_path=path,
            dataset_format="text",
            model_dir=demo_model,
            device="cpu",
            auto_compute_dtype="float32",
        )
        assert estimate["compute_dtype"] == "float32"
        result: dict[str, int] = estimate["memory_bytes"]
        return result

    lora, qlora = memory(), memory({"type": "qlora", "quantization": {"bits": 4}})
    assert lora["runtime"] == qlora["runtime"] > 0
    # The demo model's fp32 file is used in place by LoRA in fp32; QLoRA reads it all to quantize it.
    assert lora["mapped_file"] == 0 < qlora["mapped_file"]
    assert qlora["mapped_file"] == sum(p.stat().st_size for p in demo_model.glob("*.safetensors"))
