"""The linear layers of a local base model, read from its safetensors headers: no torch, no weights loaded.

peft wraps a module whose name equals a target or ends with "." + target; here a module is a linear
layer when the checkpoint holds a 2-D `<module>.weight` for it. Knowing them lets a create refuse a
target that matches nothing, instead of the worker failing minutes later.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache
from pathlib import Path

# The header of a safetensors file: an 8-byte little-endian length, then that much JSON.
_HEADER_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100 << 20
# Output layers and embeddings are never LoRA targets in loraq (peft's "all-linear" leaves lm_head out).
_NOT_TARGETS = ("lm_head", "embed_tokens", "wte", "wpe")


def linear_layer_names(model_dir: Path) -> frozenset[str]:
    """The dotted names of the model's linear layers, e.g. "model.layers.0.self_attn.q_proj"."""
    files = sorted(model_dir.glob("*.safetensors"))
    stamp = tuple((path.name, path.stat().st_mtime_ns) for path in files)
    return _linear_layer_names(tuple(files), stamp)


@lru_cache(maxsize=64)
def _linear_layer_names(files: tuple[Path, ...], _stamp: tuple[tuple[str, int], ...]) -> frozenset[str]:
    names: set[str] = set()
    for path in files:
        for tensor, info in _header(path).items():
            if tensor.endswith(".weight") and isinstance(info, dict) and len(info.get("shape", ())) == 2:
                module = tensor.removesuffix(".weight")
                if module.rsplit(".", 1)[-1] not in _NOT_TARGETS:
                    names.add(module)
    return frozenset(names)


def unmatched_targets(targets: list[str], layers: frozenset[str]) -> list[str]:
    """The targets that wrap no linear layer, by peft's rule (the whole name, or its dotted suffix)."""
    return [
        target
        for target in targets
        if not any(layer == target or layer.endswith("." + target) for layer in layers)
    ]


def _header(path: Path) -> dict[str, object]:
    with path.open("rb") as handle:
        (length,) = _HEADER_LENGTH.unpack(handle.read(_HEADER_LENGTH.size))
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path.name}: not a safetensors file (header of {length} bytes)")
        header: dict[str, object] = json.loads(handle.read(length))
    return header
