"""Peak training memory of full fine-tuning, LoRA and QLoRA on this machine, beside loraq's estimate.

A Llama-architecture model of about 250M parameters is built from a config (random weights, written
once to a temporary directory as safetensors: nothing is downloaded). Each variant then trains for a
few steps in a process of its own, loading the model the way the worker does, and reports how far its
resident memory rose above the baseline of a process that has imported the training stack.

    make bench          # = .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: import loraq and worker from this checkout

from loraq.jobs.estimate import (  # noqa: E402
    Architecture,
    activation_bytes,
    base_weight_bytes,
    four_bit_bytes_per_weight,
    lora_parameter_count,
    memory_breakdown,
    targeted_layers,
)
from loraq.jobs.spec import AdapterSpec, Quantization  # noqa: E402

# Llama-3-like proportions (GQA, SwiGLU at 2.75 x hidden), small enough for a CPU.
MODEL_CONFIG = {
    "vocab_size": 32000,
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
BATCH, SEQ_LEN = 2, 128
MiB = 2**20
MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value, held fixed


@dataclass(frozen=True)
class Variant:
    title: str
    adapter: AdapterSpec | None  # None: full fine-tuning, every parameter trained
    dtype: str  # the compute dtype
    gradient_checkpointing: bool = False


# LoRA everywhere: loraq's defaults (r=8, alpha 16, dropout 0.05, on q/k/v/o).
LORA_FP32 = AdapterSpec(type="lora", compute_dtype="float32")
LORA_BF16 = AdapterSpec(type="lora", compute_dtype="bfloat16")
NF4 = Quantization(bits=4, quant_type="nf4", double_quant=True, compute_dtype="float32")
QLORA_NF4 = AdapterSpec(type="qlora", quantization=NF4)
VARIANTS = {
    "full-fp32": Variant("full fine-tuning, fp32", None, "float32"),
    "lora-fp32": Variant("LoRA r=8 q/k/v/o, fp32", LORA_FP32, "float32"),
    "lora-bf16": Variant("LoRA, bf16", LORA_BF16, "bfloat16"),
    "qlora-nf4": Variant("QLoRA, NF4 + double quant, fp32 compute", QLORA_NF4, "float32"),
    "lora-fp32-gc": Variant("LoRA, fp32, checkpointing", LORA_FP32, "float32", gradient_checkpointing=True),
}
REFERENCE = "lora-fp32"


# --- measuring one variant, in its own process ------------------------------------------------------------


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Restart VmHWM from the current RSS (Linux >= 4.0), so that loading does not count as training."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(name: str, model_dir: Path, steps: int) -> dict[str, Any]:
    import torch

    from worker.training.model import load_base, load_model

    torch.manual_seed(0)
    gc.collect()
    baseline = status_bytes("VmRSS")
    variant = VARIANTS[name]
    device = torch.device("cpu")
    if variant.adapter is None:
        model = load_base(model_dir, torch.float32, device)
        model.config.use_cache = False
    else:
        model = load_model(model_dir, variant.adapter, device).model
    if variant.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    copy_out_of_the_file(model)
    model.train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    return_free_memory()
    loaded, load_peak, loaded_file = status_bytes("VmRSS"), status_bytes("VmHWM"), status_bytes("RssFile")
    reset_peak()
    # As the worker's Trainer runs a 16-bit job: under autocast (bf16=True), adapters kept in fp32.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.dtype == "bfloat16")
    step_seconds = []
    for _ in range(steps):
        input_ids = torch.randint(0, MODEL_CONFIG["vocab_size"], (BATCH, SEQ_LEN))
        started = time.perf_counter()
        with autocast:
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - started)
    return {
        "variant": name,
        "baseline": baseline,
        "weights_loaded": loaded - baseline,
        "file_backed_after_load": loaded_file,
        "load_peak": load_peak - baseline,
        "train_peak": status_bytes("VmHWM") - baseline,
        "trainable_parameters": sum(parameter.numel() for parameter in trainable),
        "seconds_per_step": sorted(step_seconds)[len(step_seconds) // 2],
        "four_bit_bits_per_weight": four_bit_bits_per_weight(model) if name.startswith("qlora") else None,
    }


def copy_out_of_the_file(model: Any) -> None:
    """Give every unquantized tensor memory of its own, as a copy on a GPU would have.

    transformers maps the safetensors file and uses its pages in place. RSS would then count pages
    of the file: for QLoRA, also the ~0.7 GB of fp32 weights read once to be quantized, which stay
    mapped (clean, reclaimable) while the embeddings still point into the file.
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if type(tensor).__name__ not in ("Params4bit", "Int8Params"):  # already packed copies
                tensor.data = tensor.data.clone()
    gc.collect()


def return_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back, so that RSS counts live memory only."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def four_bit_bits_per_weight(model: Any) -> float:
    """Bits per weight of the Linear4bit layers: the packed weights plus every tensor of their quant_state."""
    import bitsandbytes as bnb
    import torch

    def tensor_bytes(value: Any) -> int:
        return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0

    stored = weights = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            stored += tensor_bytes(module.weight.data) + sum(
                tensor_bytes(getattr(state, key, None)) for key in ("absmax", "code", "offset")
            )
            if state.state2 is not None:
                stored += tensor_bytes(state.state2.absmax) + tensor_bytes(state.state2.code)
            weights += module.in_features * module.out_features
    return 8 * stored / weights


# --- the estimate beside it ------------------------------------------------------------------------------


def estimate(name: str, arch: Architecture) -> dict[str, int]:
    """loraq.estimate's peak for the variant; full fine-tuning trains every parameter, none frozen."""
    variant = VARIANTS[name]
    tokens = BATCH * SEQ_LEN
    if variant.adapter is None:
        return memory_breakdown(
            base_weights=0,
            trainable_parameters=arch.parameter_count(),
            # The linear layers' inputs, kept for their weights' gradients, are mostly tensors the
            # frozen-layer count holds already (the norms' outputs): no adapter inputs on top.
            activations=activation_bytes(
                arch,
                tokens=tokens,
                compute_dtype="float32",
                lora_layers=(),
                gradient_checkpointing=variant.gradient_checkpointing,
            ),
        )
    return memory_breakdown(
        base_weights=base_weight_bytes(arch, variant.adapter.quantization, variant.dtype),
        trainable_parameters=lora_parameter_count(arch, variant.adapter),
        activations=activation_bytes(
            arch,
            tokens=tokens,
            compute_dtype=variant.dtype,
            lora_layers=targeted_layers(variant.adapter.target_modules),
            gradient_checkpointing=variant.gradient_checkpointing,
        ),
    )


# --- the driver ------------------------------------------------------------------------------------------


def write_model(model_dir: Path) -> None:
    """The benchmark model: random weights from a seeded init, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG)).save_pretrained(model_dir)


def run_in_subprocess(name: str, model_dir: Path, steps: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--variant", name, "--model-dir", str(model_dir)]
    command += ["--steps", str(steps)]
    # A fixed mmap threshold stops glibc from keeping freed tensors in its heap (its default threshold
    # grows with the tensors freed): RSS then follows live memory, and peaks repeat to a few MiB.
    environment = os.environ | {"HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-4000:]}")
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


PARTS = ("base_weights", "adapter", "optimizer", "activations")


def table(results: list[dict[str, Any]], arch: Architecture) -> str:
    reference = next(result["train_peak"] for result in results if result["variant"] == REFERENCE)
    lines = [
        "| variant | trainable params | weights loaded | peak above baseline | x LoRA fp32 | estimate "
        "(base + adapter + optimizer + activations) | s/step |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for result in results:
        name = result["variant"]
        parts = estimate(name, arch)
        breakdown = " + ".join(f"{parts[key] / MiB:.0f}" for key in PARTS)
        lines.append(
            f"| {VARIANTS[name].title} | {result['trainable_parameters'] / 1e6:.1f}M "
            f"| {result['weights_loaded'] / MiB:.0f} MiB | {result['train_peak'] / MiB:.0f} MiB "
            f"| {result['train_peak'] / reference:.2f} | {parts['total'] / MiB:.0f} MiB ({breakdown}) "
            f"| {result['seconds_per_step']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", choices=VARIANTS, help="measure one variant (the driver runs each)")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--steps", type=int, default=3, help="training steps per variant (median timed)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.model_dir, args.steps)))
        return

    started = time.monotonic()
    arch = Architecture.from_config(MODEL_CONFIG)
    with tempfile.TemporaryDirectory(prefix="loraq-bench-") as scratch:
        model_dir = Path(scratch)
        write_model(model_dir)
        results = []
        for name in VARIANTS:
            results.append(run_in_subprocess(name, model_dir, args.steps))
            print(f"{name}: peak {results[-1]['train_peak'] / MiB:.0f} MiB", file=sys.stderr, flush=True)

    import torch

    print(f"Model: Llama architecture, {arch.parameter_count() / 1e6:.1f}M parameters {MODEL_CONFIG}")
    print(f"Training: {args.steps} AdamW steps, batch {BATCH} x {SEQ_LEN} tokens, random token ids, on CPU")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; RSS after imports (the baseline) "
        f"{results[0]['baseline'] / MiB:.0f} MiB"
    )
    print()
    print(table(results, arch))
    qlora = next(result for result in results if result["four_bit_bits_per_weight"] is not None)
    print()
    print(
        f"4-bit linear layers: {qlora['four_bit_bits_per_weight']:.3f} bits per weight measured "
        f"(packed weights + quant_state), {8 * four_bit_bytes_per_weight(double_quant=True):.3f} estimated"
    )
    print(f"Total time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
