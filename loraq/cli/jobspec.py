"""A job's create body from flags or from an axolotl-style YAML file; local dataset paths are uploaded.

The YAML uses axolotl's key names where axolotl has the setting, loraq's own names for the rest, and
refuses any other key by name. The server checks the values; this only moves them to their place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HP = "method.supervised.hyperparameters."
# axolotl's name (or loraq's, where axolotl has none) -> the place in the REST body.
YAML_PATHS = {
    "base_model": "model",
    "val_set_size": HP + "validation_split",
    "adapter": "adapter.type",
    "lora_r": "adapter.r",
    "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout",
    "lora_target_modules": "adapter.target_modules",
    "peft_use_rslora": "adapter.use_rslora",
    "peft_use_dora": "adapter.use_dora",
    "num_epochs": HP + "n_epochs",
    "micro_batch_size": HP + "batch_size",
    "gradient_accumulation_steps": HP + "gradient_accumulation_steps",
    "learning_rate": HP + "learning_rate",
    "sequence_len": HP + "max_seq_len",
    "sample_packing": HP + "packing",
    "seed": "seed",
    # The same name in axolotl and in loraq's hyperparameters.
    **{
        name: HP + name
        for name in (
            "lr_scheduler",
            "warmup_ratio",
            "weight_decay",
            "max_grad_norm",
            "gradient_checkpointing",
            "save_steps",
            "save_total_limit",
            "eval_steps",
            "early_stopping_patience",
            "logging_steps",
            "train_on_inputs",
        )
    },
    # loraq's own.
    "suffix": "suffix",
    "metadata": "metadata",
    "samples": "samples",
    "sample_max_new_tokens": "sample_max_new_tokens",
}
SPECIAL_KEYS = ("datasets", "test_datasets", "load_in_4bit", "load_in_8bit", "lora_target_linear")
KNOWN_KEYS = frozenset(YAML_PATHS) | frozenset(SPECIAL_KEYS)
DATASET_KEYS = frozenset({"path", "type"})  # loraq detects a file's format itself: `type` is ignored
# YAML 1.1 reads 2e-4 (no dot) as a string; these keys are numbers.
NUMERIC_KEYS = frozenset({"learning_rate", "val_set_size", "lora_dropout", "warmup_ratio", "weight_decay"})
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class SpecError(ValueError):
    """A job spec the command refuses before asking the server (exit 3)."""


@dataclass
class Draft:
    """A create body under construction, with the dataset paths still to upload."""

    body: dict[str, Any] = field(default_factory=dict)

    def put(self, path: str, value: Any) -> None:
        *parents, last = path.split(".")
        node = self.body
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value


def from_yaml(config: Path) -> Draft:
    try:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SpecError(f"{config}: {error}") from error
    if not isinstance(loaded, dict):
        raise SpecError(f"{config}: expected a mapping of settings at the top")
    unknown = sorted(str(key) for key in loaded if key not in KNOWN_KEYS)
    if unknown:
        raise SpecError(f"{config}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(KNOWN_KEYS))}")
    draft = Draft()
    for key, value in loaded.items():
        if key in YAML_PATHS:
            draft.put(YAML_PATHS[key], _number(value) if key in NUMERIC_KEYS else value)
    _datasets(draft, loaded, "datasets", "training_file")
    _datasets(draft, loaded, "test_datasets", "validation_file")
    bits = [b for b, key in ((4, "load_in_4bit"), (8, "load_in_8bit")) if loaded.get(key)]
    if len(bits) > 1:
        raise SpecError(f"{config}: load_in_4bit and load_in_8bit are both true; choose one")
    if bits:
        draft.put("adapter.quantization", {"bits": bits[0]})
    if loaded.get("lora_target_linear"):
        draft.put("adapter.target_modules", "all-linear")
    return draft


def _datasets(draft: Draft, loaded: Mapping[str, Any], key: str, field_name: str) -> None:
    if key not in loaded:
        return
    entries = loaded[key]
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        raise SpecError(f"{key}: give exactly one dataset, as a list of one {{path: ...}}")
    unknown = sorted(str(name) for name in entries[0] if name not in DATASET_KEYS)
    if unknown:
        raise SpecError(f"{key}[0]: unknown key {unknown[0]!r}; known keys: path, type")
    if not isinstance(entries[0].get("path"), str):
        raise SpecError(f"{key}[0].path: a local file or a file id is required")
    draft.put(field_name, entries[0]["path"])


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, str) and NUMBER.match(value.strip()) else value


@dataclass(frozen=True)
class SpecFlags:
    """`jobs create` / `jobs estimate` flags; each given one overrides the config file's value."""

    config: Path | None = None
    model: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    type: str | None = None
    r: int | None = None
    alpha: float | None = None
    target_modules: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int | None = None
    suffix: str | None = None
    metadata: list[str] = field(default_factory=list)

    def draft(self) -> Draft:
        draft = from_yaml(self.config) if self.config else Draft()
        for path, value in (
            ("model", self.model),
            ("training_file", self.training_file),
            ("validation_file", self.validation_file),
            ("adapter.type", self.type),
            ("adapter.r", self.r),
            ("adapter.alpha", self.alpha),
            ("adapter.target_modules", _modules(self.target_modules)),
            (HP + "n_epochs", self.epochs),
            (HP + "batch_size", self.batch_size),
            (HP + "learning_rate", self.learning_rate),
            ("seed", self.seed),
            ("suffix", self.suffix),
        ):
            if value is not None:
                draft.put(path, value)
        for pair in self.metadata:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise SpecError(f"--metadata {pair!r}: expected key=value")
            draft.put("metadata", {**draft.body.get("metadata", {}), name: value})
        return draft


def _modules(value: str | None) -> list[str] | str | None:
    if value is None or value == "all-linear":
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


LOCAL_PATH_HINT = re.compile(r"[/\\.]")


def upload_local_files(draft: Draft, upload: Callable[[Path], str]) -> dict[str, Any]:
    """The body, with each training/validation file that names a local file replaced by its upload's id.

    A relative path is relative to where the command runs (as in axolotl), in flags and config alike.
    """
    for name in ("training_file", "validation_file"):
        value = draft.body.get(name)
        if not isinstance(value, str):
            continue
        local = Path(value).expanduser()
        if local.is_file():
            draft.body[name] = upload(local)
        elif LOCAL_PATH_HINT.search(value):  # a path (file ids have no dots or slashes) that is not there
            raise SpecError(f"{name}: no such file: {local}")
    if "model" not in draft.body or "training_file" not in draft.body:
        missing = "model (--model or base_model)" if "model" not in draft.body else "training_file"
        raise SpecError(f"a job needs a {missing}")
    return draft.body
