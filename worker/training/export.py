"""Write the adapter bundle: PEFT adapter, tokenizer, resolved spec, metrics, manifest and model card."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, TrainerState

from loraq.core.json_text import to_json
from loraq.storage.hashing import remembered_sha256_file, sha256_file
from worker.training.contracts import TrainingRequest
from worker.training.model import free_memory, load_base

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "safetensors")
BASE_MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json")


def export_bundle(
    bundle_dir: Path,
    request: TrainingRequest,
    *,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    state: TrainerState,
    base_description: dict[str, Any],
    data_stats: dict[str, Any],
    metrics: dict[str, Any],
    device: torch.device,
    evaluation: dict[str, Any] | None = None,
    samples: list[dict[str, Any]] | None = None,
) -> Path:
    """Write every bundle file into bundle_dir and return it."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    # The server's path to the base means nothing to whoever downloads the bundle; its name does.
    model.peft_config["default"].base_model_name_or_path = request.base_model_name
    # adapter_config.json + adapter_model.safetensors. We never resize or train the embeddings, and
    # the default "auto" would ask the Hub whether the base's vocabulary changed.
    model.save_pretrained(str(bundle_dir), save_embedding_layers=False)
    tokenizer.save_pretrained(bundle_dir)
    write_json(bundle_dir / "training_args.json", training_args(request))
    write_metrics(bundle_dir / "metrics.jsonl", state.log_history, evaluation)
    if samples:
        write_jsonl(bundle_dir / "samples.jsonl", samples)
    manifest = build_manifest(
        request,
        state,
        base_description,
        data_stats,
        metrics,
        device,
        # What the model did, not what was asked: proof that checkpointing was on.
        gradient_checkpointing=bool(model.is_gradient_checkpointing),
    )
    write_json(bundle_dir / "manifest.json", manifest)
    # Written last: PEFT's save_pretrained leaves a generic README.md that this replaces.
    (bundle_dir / "README.md").write_text(model_card(request, manifest), encoding="utf-8")
    return bundle_dir


def export_merged(
    merged_dir: Path,
    *,
    base_model_path: Path,
    adapter_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    device: torch.device,
) -> Path:
    """The base at full precision with the exported adapter merged in: a plain transformers model.

    Never merged into a 4- or 8-bit base: rounding the merged weights back to 4 bits loses much
    of what the adapter learned. A QLoRA adapter was trained against the quantized weights, so the
    merged model is close to, not identical with, the model that was trained.
    """
    free_memory()  # the caller has dropped the training model: two copies of the base may not fit
    base = load_base(base_model_path, dtype, device)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)  # safetensors: transformers 5 writes no other format
    tokenizer.save_pretrained(merged_dir)
    return merged_dir


def training_args(request: TrainingRequest) -> dict[str, Any]:
    """The resolved spec the adapter was trained with."""
    return {
        "hyperparameters": request.hyperparameters.model_dump(mode="json"),
        "adapter": request.adapter.model_dump(mode="json"),
        "export": {"merged": request.merged},
        "seed": request.seed,
        "dataset_format": request.dataset_format,
    }


def build_manifest(
    request: TrainingRequest,
    state: TrainerState,
    base_description: dict[str, Any],
    data_stats: dict[str, Any],
    metrics: dict[str, Any],
    device: torch.device,
    *,
    gradient_checkpointing: bool,
) -> dict[str, Any]:
    """What the adapter was trained from and with: enough to reproduce the run."""
    validation = request.validation_path
    return {
        "base_model": {
            "name": request.base_model_name,
            "revision": "sha256:" + base_model_revision(request.base_model_path, request.hash_cache_dir),
        },
        "adapter_type": request.adapter.type,
        "quantized_base": base_description,
        "compute_dtype": base_description["compute_dtype"],
        "dataset": {
            "format": request.dataset_format,
            "train_sha256": sha256_file(request.train_path),
            "validation_sha256": sha256_file(validation) if validation else None,
            **data_stats,
        },
        "seed": request.seed,
        "device": describe_device(device),
        "libraries": library_versions(),
        "gradient_checkpointing": gradient_checkpointing,
        "trained_tokens": state.num_input_tokens_seen,
        "steps": state.global_step,
        "total_steps": state.max_steps,  # more than steps when training stopped early
        "best_eval_step": state.best_global_step,  # the adapter's step when early stopping kept the best
        "metrics": metrics,
        "merged_export": request.merged,
        "continues": request.continues,  # the ft: model this adapter was trained further from
    }


def base_model_revision(base_model_path: Path, cache_dir: Path | None = None) -> str:
    """A content hash of the base's config and weights: the revision a local directory lacks."""
    files = sorted({path for pattern in BASE_MODEL_FILES for path in base_model_path.glob(pattern)})
    digest = hashlib.sha256()
    for path in files:
        file_digest = sha256_file(path) if cache_dir is None else remembered_sha256_file(path, cache_dir)
        digest.update(f"{path.name}\0{file_digest}\n".encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    return {"python": platform.python_version()} | {name: _installed_version(name) for name in LIBRARIES}


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_device(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def write_json(path: Path, value: Any) -> None:
    path.write_text(to_json(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_metrics(
    path: Path, log_history: list[dict[str, Any]], evaluation: dict[str, Any] | None = None
) -> None:
    """One JSON object per logged step (train and eval), in the order the Trainer logged them; then the
    job's evaluation object (base vs tuned valid loss), if it has validation data."""
    entries = [*log_history, *([{"evaluation": evaluation}] if evaluation is not None else [])]
    write_jsonl(path, entries)


def write_jsonl(path: Path, entries: list[dict[str, Any]]) -> None:
    lines = (to_json(entry, sort_keys=True) + "\n" for entry in entries)
    path.write_text("".join(lines), encoding="utf-8")


_MODEL_CARD = """\
---
base_model: {name}
library_name: peft
tags: [loraq, {adapter_type}, lora]
---

# LoRA adapter for {name}

A {adapter_type} adapter trained by loraq on `{name}` (revision `{revision}`).

## Adapter

| r | alpha | dropout | target modules | base in training |
|---|---|---|---|---|
| {r} | {alpha} | {dropout} | {target_modules} | {base} |

## Data

{examples} {format} examples: {tokens} tokens, {label_tokens} of them trained on;
{truncated} truncated to {max_seq_len} tokens, {dropped} dropped with nothing left to train on.
{sequences}

## Training

{steps} optimizer steps ({n_epochs} epochs, batch size {batch_size} x {accumulation} accumulation,
learning rate {learning_rate}, {lr_scheduler} schedule), seed {seed}, on {device}.
Final train loss: {train_loss}. Final eval loss: {eval_loss}.

## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

{base_source}
base = AutoModelForCausalLM.from_pretrained(base_model)
model = PeftModel.from_pretrained(base, "path/to/this/bundle")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/bundle")
```
"""

# The base's own name loads only a hub model; a server's local base is a directory the reader must copy.
_LOCAL_BASE = (
    "# A copy of the base model directory {name} (config.json and safetensors; revision {revision}):\n"
    "# on the loraq server that trained this adapter, $LORAQ_HOME/models/{name}.\n"
    'base_model = "path/to/{name}"'
)
_HUB_BASE = 'base_model = "{name}"  # the hub model, at the revision recorded in manifest.json'


def model_card(request: TrainingRequest, manifest: dict[str, Any]) -> str:
    """The README.md: what was trained, on what, how well, and how to load it."""
    adapter, hp, dataset = request.adapter, request.hyperparameters, manifest["dataset"]
    quantized = manifest["quantized_base"]
    targets = adapter.target_modules
    return _MODEL_CARD.format(
        name=request.base_model_name,
        base_source=(_LOCAL_BASE if request.base_model_path.is_dir() else _HUB_BASE).format(
            name=request.base_model_name, revision=manifest["base_model"]["revision"]
        ),
        adapter_type=adapter.type,
        revision=manifest["base_model"]["revision"],
        r=adapter.r,
        alpha=adapter.alpha,
        dropout=adapter.dropout,
        target_modules=targets if isinstance(targets, str) else ", ".join(targets),
        base=f"{quantized['bits']}-bit" if "bits" in quantized else quantized["compute_dtype"],
        format=request.dataset_format,
        max_seq_len=hp.max_seq_len,
        steps=manifest["steps"],
        n_epochs=hp.n_epochs,
        batch_size=hp.batch_size,
        accumulation=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler=hp.lr_scheduler,
        seed=request.seed,
        device=manifest["device"],
        train_loss=_loss(manifest["metrics"].get("train_loss")),
        eval_loss=_loss(manifest["metrics"].get("eval_loss")),
        sequences=_sequences(dataset, hp.max_seq_len),
        **{key: dataset[key] for key in ("examples", "tokens", "label_tokens", "truncated", "dropped")},
    )


def _sequences(dataset: dict[str, Any], max_seq_len: int) -> str:
    if "packing" not in dataset:
        return "One example per training sequence."
    return (
        f"Packed into {dataset['sequences']} sequences of up to {max_seq_len} tokens; "
        "no token attends to another example's."
    )


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
