"""Load the frozen base (bf16/fp32, or 4/8-bit for QLoRA) and wrap it with LoRA adapters."""

from __future__ import annotations

import gc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from loraq.jobs.spec import AdapterSpec, Quantization


@dataclass
class LoadedModel:
    model: PeftModel
    compute_dtype: torch.dtype
    base_description: dict[str, Any]  # what the frozen base looked like in memory, for the manifest


def pick_device() -> torch.device:
    """The current CUDA GPU if there is one, else the CPU: one code path for both."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_compute_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Resolve "auto": bfloat16 on a GPU that has it, else float32 (bf16 matmuls on CPU are very slow)."""
    if requested == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float32
    return getattr(torch, requested)


def load_model(
    base_model_path: Path, adapter: AdapterSpec, device: torch.device, *, initial_adapter: Path | None = None
) -> LoadedModel:
    """The base model from local safetensors, quantized if the adapter is QLoRA, with LoRA layers: fresh, or
    with the weights of `initial_adapter` (a bundle of the same shape) to train further."""
    compute_dtype = resolve_compute_dtype(adapter.effective_compute_dtype, device)
    base = load_base(
        base_model_path, compute_dtype, device, quantization_config(adapter.quantization, compute_dtype)
    )
    # Training never reuses past keys; and with a cache, transformers ignores packed sequences'
    # position_ids when building the mask (masking_utils._preprocess_mask_arguments), so examples would leak.
    base.config.use_cache = False
    base_description = describe_base(base, adapter.quantization, compute_dtype)
    if adapter.quantization is not None:
        keep_4bit_layers_trainable(base)
        # Gradient checkpointing, if asked, is the Trainer's: non-reentrant, so no input-grad hook needed.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = get_peft_model(base, lora_config(adapter))
    if initial_adapter is not None:
        weights = load_file(initial_adapter / "adapter_model.safetensors", device=str(device))
        # The shape was checked at create; a weight of another name would be dropped, so refuse it here.
        unexpected = set_peft_model_state_dict(model, weights).unexpected_keys  # type: ignore[attr-defined]
        if unexpected:
            raise ValueError(f"the adapter to continue does not fit this one: {sorted(unexpected)[:3]}")
    return LoadedModel(model=model, compute_dtype=compute_dtype, base_description=base_description)


def load_base(
    base_model_path: Path,
    dtype: torch.dtype,
    device: torch.device,
    quantization: BitsAndBytesConfig | None = None,
) -> PreTrainedModel:
    """A base model from local safetensors only: no remote code, no pickle, no Hub."""
    return AutoModelForCausalLM.from_pretrained(
        base_model_path,
        dtype=dtype,
        quantization_config=quantization,
        device_map={"": str(device)},
        trust_remote_code=False,
        use_safetensors=True,
        local_files_only=True,
    )


def quantization_config(
    quantization: Quantization | None, compute_dtype: torch.dtype
) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for a QLoRA base; None for a plain LoRA base."""
    if quantization is None:
        return None
    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def lora_config(adapter: AdapterSpec) -> LoraConfig:
    return LoraConfig(
        r=adapter.r,
        # peft annotates int but only computes alpha / r; whole numbers stay ints for other loaders.
        lora_alpha=int(adapter.alpha) if float(adapter.alpha).is_integer() else adapter.alpha,  # type: ignore[arg-type]
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        use_rslora=adapter.use_rslora,
        use_dora=adapter.use_dora,
        task_type="CAUSAL_LM",
    )


def describe_base(
    base: PreTrainedModel, quantization: Quantization | None, compute_dtype: torch.dtype
) -> dict[str, Any]:
    """Count the base's linear layers by class, so the manifest proves what was trained on."""
    linears = (module for module in base.modules() if isinstance(module, nn.Linear))
    linear_types = Counter(type(module).__name__ for module in linears)
    description: dict[str, Any] = {
        "linear_layer_types": dict(sorted(linear_types.items())),
        "quantized_linear_layers": count_quantized_linear_layers(base) if quantization else 0,
        "compute_dtype": dtype_name(compute_dtype),
    }
    if quantization is not None:
        description["bits"] = quantization.bits
        if quantization.bits == 4:
            description |= {"quant_type": quantization.quant_type, "double_quant": quantization.double_quant}
    return description


def keep_4bit_layers_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference on the first eval-mode forward.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a Linear4bit to a packed layout the first
    time it runs in eval mode, and the packed matmul has no backward: after one evaluation, the
    gradients that flow through the base would be silently wrong.
    """
    import bitsandbytes as bnb  # lazily: a plain LoRA job never needs it

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def count_quantized_linear_layers(model: nn.Module) -> int:
    import bitsandbytes as bnb  # lazily: a plain LoRA job never needs it

    quantized = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sum(isinstance(module, quantized) for module in model.modules())


def free_memory() -> None:
    """Return the memory of dropped models now: to the allocator, and on a GPU to the device."""
    gc.collect()  # a model's modules hold reference cycles that refcounting alone never frees
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
