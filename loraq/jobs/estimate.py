"""Estimate a fine-tuning job before it runs: its tokens, sequences, steps and peak training memory.

Pure Python for the API process: examples are tokenized by loraq.tokens, the very function the
worker trains with (so the counts are the worker's), and config.json gives the model's shape.
Memory is a documented rule of thumb, checked against measured peaks in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraq.jobs.spec import AdapterSpec, JobCreate, Quantization, held_out_indices
from loraq.tokens.chat_template import chat_template as chat_template  # re-exported for tests
from loraq.tokens.counting import count_examples, tokenize_file
from loraq.tokens.encoding import tokenizer_of
from loraq.tokens.packing import pack_by_length

# The linear layers of a Llama-style decoder layer, which LoRA can target; "all-linear" targets them all.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32_BYTES = 4

# bitsandbytes 4-bit: two weights a byte, plus one absmax scale per block of 64 weights, in fp32;
# double quantization stores those scales in 8 bits, with one fp32 scale per 256 of them.
NF4_BLOCK = 64
NF4_DOUBLE_QUANT_BLOCK = 256

# Saved activations, in bytes per token (see activation_bytes for the rule they make up).
NORM_BYTES_PER_HIDDEN = 6  # RMSNorm works in fp32 whatever the compute dtype: its input and output
ATTENTION_VALUES_PER_HIDDEN = 2.5  # q, k, v after RoPE, the attention output and its softmax statistics
MLP_VALUES_PER_INTERMEDIATE = 3  # gate and up projections and their SiLU product
LORA_EXTRA_BYTES_PER_INPUT = 3  # beyond one value: the dropout mask, and (o_proj, down_proj) the input itself
LOGIT_BYTES_PER_VOCAB = 16  # logits, their fp32 copy and log-softmax, and its gradient


@dataclass(frozen=True)
class Architecture:
    """The shape of a Llama-style decoder (Llama, Mistral, Qwen2-like), read from config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Architecture:
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=hidden,
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=config.get("attention_bias", False),
            mlp_bias=config.get("mlp_bias", False),
        )

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> Architecture:
        return cls.from_config(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        hidden, intermediate = self.hidden_size, self.intermediate_size
        query, key_value = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": (hidden, query),
            "k_proj": (hidden, key_value),
            "v_proj": (hidden, key_value),
            "o_proj": (query, hidden),
            "gate_proj": (hidden, intermediate),
            "up_proj": (hidden, intermediate),
            "down_proj": (intermediate, hidden),
        }

    def linear_weight_count(self) -> int:
        """The weights of every decoder layer's linear layers: what bitsandbytes quantizes."""
        return self.num_layers * sum(fan_in * fan_out for fan_in, fan_out in self.linear_shapes().values())

    def linear_output_rows(self) -> int:
        return self.num_layers * sum(fan_out for _, fan_out in self.linear_shapes().values())

    def parameter_count(self) -> int:
        """All parameters, tied ones once: what transformers' num_parameters() says."""
        rows = {name: fan_out for name, (_, fan_out) in self.linear_shapes().items()}
        biases = sum(rows[name] for name in LINEAR_LAYERS[:4]) * self.attention_bias
        biases += sum(rows[name] for name in LINEAR_LAYERS[4:]) * self.mlp_bias
        norms = 2 * self.hidden_size  # before attention and before the MLP
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        final_norm = self.hidden_size
        return self.linear_weight_count() + self.num_layers * (biases + norms) + embeddings + final_norm


def targeted_layers(target_modules: list[str] | str) -> list[str]:
    """Which of LINEAR_LAYERS LoRA wraps; peft matches a name by its last dotted part, as here."""
    if target_modules == "all-linear":  # peft's "all-linear" leaves the output layer (lm_head) out
        return list(LINEAR_LAYERS)
    names = {name.rsplit(".", 1)[-1] for name in target_modules}
    return [layer for layer in LINEAR_LAYERS if layer in names]


def lora_parameter_count(arch: Architecture, adapter: AdapterSpec) -> int:
    """r x (in + out) per targeted layer, plus DoRA's magnitude per output row."""
    shapes = arch.linear_shapes()
    per_layer = 0
    for name in targeted_layers(adapter.target_modules):
        fan_in, fan_out = shapes[name]
        per_layer += adapter.r * (fan_in + fan_out) + (fan_out if adapter.use_dora else 0)
    return arch.num_layers * per_layer


def base_weight_bytes(arch: Architecture, quantization: Quantization | None, compute_dtype: str) -> int:
    """The frozen base in memory.

    LoRA: every parameter in the compute dtype (fp32 4 B, bf16/fp16 2 B). QLoRA: bitsandbytes
    quantizes the decoder layers' linear weights (8-bit: 1 B each plus an fp32 scale per output row;
    4-bit: see four_bit_bytes_per_weight) and leaves embeddings, norms, biases and lm_head alone,
    which peft's prepare_model_for_kbit_training then upcasts to fp32 (peft/utils/other.py).
    """
    if quantization is None:
        return arch.parameter_count() * DTYPE_BYTES[compute_dtype]
    linear = arch.linear_weight_count()
    rest = (arch.parameter_count() - linear) * FP32_BYTES
    if quantization.bits == 8:
        return linear + arch.linear_output_rows() * FP32_BYTES + rest
    return math.ceil(linear * four_bit_bytes_per_weight(double_quant=quantization.double_quant)) + rest


def four_bit_bytes_per_weight(*, double_quant: bool) -> float:
    """0.5 B, plus a 4 B absmax per 64 weights (0.5 bit), or double-quantized 1 B + 4 B/256 (0.127 bit)."""
    if double_quant:
        return 0.5 + 1 / NF4_BLOCK + FP32_BYTES / (NF4_BLOCK * NF4_DOUBLE_QUANT_BLOCK)
    return 0.5 + FP32_BYTES / NF4_BLOCK


def activation_bytes(
    arch: Architecture,
    *,
    tokens: int,  # batch size x the longest sequence in a batch
    compute_dtype: str,
    lora_layers: Sequence[str],
    gradient_checkpointing: bool,
) -> int:
    """What the forward pass keeps for the backward pass, at its peak: a rule calibrated on CPU.

    Per token, each decoder layer keeps: 6 B per hidden unit for its two RMSNorms (computed in fp32
    whatever the dtype), 2.5 values per hidden unit for attention and 3 per intermediate unit for the
    MLP, in the compute dtype; and, per input feature of each LoRA-targeted linear, its dropped-out
    input (one value) plus 3 B. For Llama's MLP (intermediate = 2.7 x hidden) that is 49 B per
    hidden unit in fp32 (28 in bf16), plus 28 (20) for LoRA on q/k/v/o: the same order as the 34 B
    that Korthikanti et al. (2022) count for a GPT layer in 16 bits. With gradient checkpointing
    only each layer's input stays (one value per hidden unit), plus one layer's worth while it is
    recomputed. Then the loss: 16 B per vocabulary entry per token (the logits, their fp32
    log-softmax and its gradient). Counted from the tensors autograd saves (transformers 5, peft
    0.21); the backward pass's transient buffers and the allocator's slack come on top.
    """
    value = DTYPE_BYTES[compute_dtype]
    shapes = arch.linear_shapes()
    layer = (
        NORM_BYTES_PER_HIDDEN * arch.hidden_size
        + value * ATTENTION_VALUES_PER_HIDDEN * arch.hidden_size
        + value * MLP_VALUES_PER_INTERMEDIATE * arch.intermediate_size
        + (value + LORA_EXTRA_BYTES_PER_INPUT) * sum(shapes[name][0] for name in lora_layers)
    )
    if gradient_checkpointing:
        layers = arch.num_layers * value * arch.hidden_size + layer
    else:
        layers = arch.num_layers * layer
    return math.ceil(tokens * (layers + LOGIT_BYTES_PER_VOCAB * arch.vocab_size))


def memory_breakdown(
    *,
    base_weights: int,
    trainable_parameters: int,
    activations: int,
    process: dict[str, int] | None = None,
) -> dict[str, int]:
    """Peak training memory, in bytes, by what holds it.

    The trainable parameters (LoRA's, or all of them in full fine-tuning) are fp32: 4 B each. AdamW
    keeps two fp32 moments per parameter, and the fp32 gradients add one more: 12 B each. process
    adds what the device's process holds beyond the tensors (cpu_process_bytes on a CPU).
    """
    breakdown = {
        "base_weights": base_weights,
        "adapter": trainable_parameters * FP32_BYTES,
        "optimizer": trainable_parameters * 3 * FP32_BYTES,
        "activations": activations,
    } | (process or {})
    return breakdown | {"total": sum(breakdown.values())}


# What an estimate assumes when no worker has said what it trains on: the production case.
GPU_ASSUMED = "no live worker; assumed a GPU with bfloat16"

# A CPU worker's job process, measured with bench/memory.py (torch 2.13, transformers 5, peft 0.21):
# its resident memory after importing the training stack, before it loads anything.
CPU_RUNTIME_BYTES = 413 << 20
# What the allocator's slack and the backward pass's transient buffers add to the saved activations,
# fitted on the worker's peaks (LoRA and QLoRA, 70M and 250M): the rest of the rule is counted.
CPU_ACTIVATION_FACTOR = 1.1


def cpu_process_bytes(*, model_dir: Path, weights_in_place: bool) -> dict[str, int]:
    """What a CPU worker's training process holds besides the tensors the rule counts.

    Its runtime (the imported libraries), and the model file's pages: transformers maps the
    safetensors and, when the file's dtype is the compute dtype and nothing is quantized, uses them in
    place (then they are the base weights, counted once); otherwise it reads every page once to
    convert or quantize it, and the mapped pages stay resident while the file is mapped.
    """
    file_bytes = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    return {"runtime": CPU_RUNTIME_BYTES, "mapped_file": 0 if weights_in_place else file_bytes}


def is_cpu(device: str) -> bool:
    """Whether a worker's device, as it registered it ("cpu", "cuda (NVIDIA H100)"), is a CPU."""
    return device.split(" ", 1)[0] == "cpu"


def file_dtype(model_dir: Path) -> str:
    """The dtype the model's weights are stored in, as config.json says (float32 if it does not)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def estimate_job(
    *,
    request: JobCreate,
    train_path: Path,
    dataset_format: str,
    model_dir: Path,
    device: str = GPU_ASSUMED,
    auto_compute_dtype: str = "bfloat16",
    validation_file_examples: int | None = None,
    examples: int | None = None,
    sample_examples: int | None = None,
) -> dict[str, Any]:
    """Tokens, sequences, steps and peak memory of a job, from its spec, training file and local base model.

    device is what the estimate assumes the job trains on, and auto_compute_dtype what "auto"
    resolves to there (bfloat16 on a GPU that has it, float32 on a CPU). examples is the file's count
    if the upload already made it. A file of more than sample_examples examples is tokenized in an
    even sample of about that many, and its counts scaled (the answer's "sampled" says by how much).
    """
    hp = request.requested_hyperparameters
    if examples is None:
        examples = count_examples(train_path)
    # Which examples are held out depends on the seed; a job without one gets a random seed later.
    held_out = held_out_indices(examples, hp.validation_split, request.seed or 0)
    resolved = hp.resolve(n_examples=examples)
    stride = 1 if sample_examples is None else max(1, math.ceil(examples / sample_examples))
    tokenizer = tokenizer_of(model_dir)
    with tempfile.TemporaryDirectory(prefix="loraq-sample-") as scratch:
        sample_path = train_path
        if stride > 1:
            sample_path = Path(scratch) / "sample.jsonl"
            write_sample(train_path, sample_path, every=stride, skip=held_out)
        train = tokenize_file(
            sample_path,
            dataset_format,
            tokenizer,
            max_seq_len=resolved.max_seq_len,
            train_on_inputs=resolved.train_on_inputs,
            keep=None if stride > 1 else lambda index: index not in held_out,
        )
    lengths = [len(input_ids) for input_ids in train.input_ids]
    sequences = sequence_lengths(lengths, packing=resolved.packing, max_seq_len=resolved.max_seq_len)
    # Scaled from the sample to the whole file: 1.0 when every example was tokenized.
    train_examples = examples - len(held_out)
    scale = train_examples / train.examples if stride > 1 and train.examples else 1.0
    sequence_count = round(len(sequences) * scale)
    # The Trainer's steps per epoch: ceil(ceil(sequences / batch) / accumulation), the same number.
    total_steps = resolved.n_epochs * math.ceil(
        sequence_count / (resolved.batch_size * resolved.gradient_accumulation_steps)
    )
    # A sample may miss the file's longest example: size memory for the longest a sequence can be.
    longest = resolved.max_seq_len if stride > 1 else max(sequences, default=0)

    adapter = request.adapter
    compute_dtype = adapter.effective_compute_dtype
    compute_dtype = auto_compute_dtype if compute_dtype == "auto" else compute_dtype
    arch = Architecture.from_model_dir(model_dir)
    adapter_parameters = lora_parameter_count(arch, adapter)
    activations = activation_bytes(
        arch,
        tokens=resolved.batch_size * longest,  # the batch padded to its longest
        compute_dtype=compute_dtype,
        lora_layers=targeted_layers(adapter.target_modules),
        gradient_checkpointing=resolved.gradient_checkpointing,
    )
    # A GPU's figure is the tensors (what torch.cuda.max_memory_allocated reports); a CPU's, the
    # process's peak resident memory, which bench/memory.py measures on the worker's own code path.
    process = None
    if is_cpu(device):
        activations = math.ceil(activations * CPU_ACTIVATION_FACTOR)
        in_place = adapter.quantization is None and file_dtype(model_dir) == compute_dtype
        process = cpu_process_bytes(model_dir=model_dir, weights_in_place=in_place)
    memory = memory_breakdown(
        base_weights=base_weight_bytes(arch, adapter.quantization, compute_dtype),
        trainable_parameters=adapter_parameters,
        activations=activations,
        process=process,
    )
    train_tokens = round(train.tokens * scale)
    return {
        "examples": examples,
        "train_examples": train.examples if stride == 1 else train_examples,
        "validation_examples": len(held_out)
        if validation_file_examples is None
        else validation_file_examples,
        "train_tokens": train_tokens,
        "label_tokens": round(train.label_tokens * scale),
        "truncated_examples": round(train.truncated * scale),
        "dropped_examples": round(train.dropped * scale),
        "token_lengths": percentiles(train.full_lengths),
        "sequences": sequence_count,
        "total_steps": total_steps,
        "trained_tokens": resolved.n_epochs * train_tokens,
        "sampled": None if stride == 1 else sample_error(train.full_lengths, population=train_examples),
        "hyperparameters": resolved.model_dump(mode="json"),
        "device": device,
        "compute_dtype": compute_dtype,
        "parameters": {"base": arch.parameter_count(), "trainable": adapter_parameters},
        "memory_bytes": memory,
    }


def write_sample(source: Path, dest: Path, *, every: int, skip: set[int] | frozenset[int]) -> None:
    """Every `every`-th example of a validated file (not those in skip), copied as they are.

    The lines that are not taken are only counted, never parsed: a sample of a 200 MB file costs
    one read of it.
    """
    index = 0
    with source.open("rb") as lines, dest.open("wb") as out:
        for raw in lines:  # a binary file splits on b"\n" only, as the validator does
            if not raw.strip():
                continue
            if index % every == 0 and index not in skip:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
            index += 1


def sample_error(lengths: Sequence[int], *, population: int) -> dict[str, Any]:
    """How far a sample's scaled token count may be from the file's: the 95% interval of the mean."""
    n = len(lengths)
    mean = statistics.fmean(lengths) if lengths else 0.0
    spread = statistics.stdev(lengths) if n > 1 else 0.0
    finite = math.sqrt(max(0.0, 1 - n / population)) if population else 0.0
    relative = 1.96 * spread / mean / math.sqrt(n) * finite if mean else 0.0
    return {
        "examples": n,
        "of": population,
        "tokens_relative_error": round(relative, 4),
        "note": "counts are scaled from an even sample of the file; memory assumes a max_seq_len sequence",
    }


def sequence_lengths(lengths: list[int], *, packing: bool, max_seq_len: int) -> list[int]:
    """The training sequences' lengths: one example each, or packs as the worker makes them."""
    if not packing:
        return lengths
    return [sum(lengths[i] for i in pack) for pack in pack_by_length(lengths, max_seq_len)]


def percentiles(values: Sequence[int]) -> dict[str, int]:
    """p50, p90, p99 (nearest rank) and max; zeros for no values."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}

    def rank(p: int) -> int:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}
