"""Estimate a fine-tuning job before it runs: its tokens, sequences, steps and peak training memory.

Pure Python for the API process: the `tokenizers` library reads the base's tokenizer.json, a
sandboxed jinja2 renders its chat template, and config.json gives its shape. Token counts match the
worker's (worker/training/data.py) for the usual tokenizers; memory is a documented rule of thumb,
checked against measured peaks in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from loraq.chat_template import CHATML_TEMPLATE
from loraq.datasets import iter_examples
from loraq.packing import pack_by_length
from loraq.spec import AdapterSpec, JobCreate, Quantization, held_out_indices, resolve_hyperparameters

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
) -> dict[str, int]:
    """Peak training memory, in bytes, by what holds it.

    The trainable parameters (LoRA's, or all of them in full fine-tuning) are fp32: 4 B each. AdamW
    keeps two fp32 moments per parameter, and the fp32 gradients add one more: 12 B each.
    """
    breakdown = {
        "base_weights": base_weights,
        "adapter": trainable_parameters * FP32_BYTES,
        "optimizer": trainable_parameters * 3 * FP32_BYTES,
        "activations": activations,
    }
    return breakdown | {"total": sum(breakdown.values())}


def estimate_job(
    *,
    request: JobCreate,
    train_path: Path,
    dataset_format: str,
    model_dir: Path,
    auto_compute_dtype: str = "bfloat16",
) -> dict[str, Any]:
    """Tokens, sequences, steps and peak memory of a job, from its spec, training file and local base model.

    auto_compute_dtype is what "auto" resolves to on the worker: bfloat16 on a GPU that has it
    (the default here), float32 on a CPU.
    """
    hp = request.requested_hyperparameters
    tokenizer = ExampleTokenizer.from_model_dir(model_dir)
    lengths = [tokenizer.length(record, dataset_format) for record in iter_examples(train_path)]
    # Which examples are held out depends on the seed; a job without one gets a random seed later.
    held_out = held_out_indices(len(lengths), hp.validation_split, request.seed or 0)
    train_lengths = [length for index, length in enumerate(lengths) if index not in held_out]
    resolved = resolve_hyperparameters(hp, n_examples=len(lengths))
    truncated = [min(length, resolved.max_seq_len) for length in train_lengths]
    sequences = sequence_lengths(truncated, packing=resolved.packing, max_seq_len=resolved.max_seq_len)
    # The Trainer's steps per epoch: ceil(ceil(sequences / batch) / accumulation), the same number.
    total_steps = resolved.n_epochs * math.ceil(
        len(sequences) / (resolved.batch_size * resolved.gradient_accumulation_steps)
    )

    adapter = request.adapter
    compute_dtype = adapter.effective_compute_dtype
    compute_dtype = auto_compute_dtype if compute_dtype == "auto" else compute_dtype
    arch = Architecture.from_model_dir(model_dir)
    adapter_parameters = lora_parameter_count(arch, adapter)
    memory = memory_breakdown(
        base_weights=base_weight_bytes(arch, adapter.quantization, compute_dtype),
        trainable_parameters=adapter_parameters,
        activations=activation_bytes(
            arch,
            tokens=resolved.batch_size * max(sequences, default=0),  # the batch padded to its longest
            compute_dtype=compute_dtype,
            lora_layers=targeted_layers(adapter.target_modules),
            gradient_checkpointing=resolved.gradient_checkpointing,
        ),
    )
    train_tokens = sum(truncated)
    return {
        "examples": len(lengths),
        "train_examples": len(train_lengths),
        "validation_examples": len(held_out),
        "train_tokens": train_tokens,
        "truncated_examples": sum(length > resolved.max_seq_len for length in train_lengths),
        "token_lengths": percentiles(train_lengths),
        "sequences": len(sequences),
        "total_steps": total_steps,
        "trained_tokens": resolved.n_epochs * train_tokens,
        "hyperparameters": resolved.model_dump(mode="json"),
        "compute_dtype": compute_dtype,
        "parameters": {"base": arch.parameter_count(), "trainable": adapter_parameters},
        "memory_bytes": memory,
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


class ExampleTokenizer:
    """Counts an example's tokens as the worker's tokenizer does, without transformers."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any], chat_template: str) -> None:
        self.tokenizer = tokenizer
        # The template sees the special tokens by name ("{{ bos_token }}"), as transformers passes them.
        self.special_tokens = {
            name: _token_text(value)
            for name, value in config.items()
            if name.endswith("_token") and _token_text(value) is not None
        }
        eos = self.special_tokens.get("eos_token")
        self.eos_token_id = tokenizer.token_to_id(eos) if eos else None
        self._template = _compile_chat_template(chat_template)
        self._lengths: dict[str, Callable[[dict[str, Any]], int]] = {
            "chat": self._chat_length,
            "prompt_completion": self._prompt_completion_length,
            "text": self._text_length,
        }

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ExampleTokenizer:
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return cls(tokenizer, config, chat_template(model_dir, config))

    def length(self, record: dict[str, Any], dataset_format: str) -> int:
        """Tokens in one example, before truncation."""
        return self._lengths[dataset_format](record)

    def _text_length(self, record: dict[str, Any]) -> int:
        return self._with_eos_length(self.tokenizer.encode(record["text"]).ids)

    def _prompt_completion_length(self, record: dict[str, Any]) -> int:
        prompt = self.tokenizer.encode(record["prompt"]).ids
        completion = self.tokenizer.encode(record["completion"], add_special_tokens=False).ids
        return len(prompt) + self._with_eos_length(completion)

    def _chat_length(self, record: dict[str, Any]) -> int:
        # As transformers renders: no loraq-only keys, no None values (templates would print "None").
        messages = [
            {key: value for key, value in message.items() if key != "weight" and value is not None}
            for message in record["messages"]
        ]
        text = self._template.render(
            messages=messages, tools=record.get("tools"), add_generation_prompt=False, **self.special_tokens
        )
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _with_eos_length(self, ids: list[int]) -> int:
        ends_with_eos = self.eos_token_id is None or ids[-1:] == [self.eos_token_id]
        return len(ids) + (0 if ends_with_eos else 1)


def chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str:
    """The base's chat template (chat_template.jinja, else tokenizer_config.json's), else loraq's ChatML."""
    path = model_dir / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else CHATML_TEMPLATE


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with its content."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class _GenerationTag(Extension):
    """{% generation %}...{% endgeneration %}: transformers marks assistant text with it; render the body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
) -> str:
    # Like transformers' tojson: keeps non-ASCII text and HTML characters as they are, unlike jinja2's.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _compile_chat_template(template: str) -> jinja2.Template:
    """Compile as transformers does: sandboxed, the same whitespace rules, filters and globals."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment.from_string(template)
