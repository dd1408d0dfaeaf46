"""Validated JSONL in, tokenized examples with loss labels out: loss only where the model should learn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging

from loraq.chat_template import CHATML_TEMPLATE
from loraq.datasets import iter_examples
from loraq.packing import pack_by_length

logger = logging.get_logger(__name__)

Record = dict[str, Any]
Example = tuple[list[int], list[int]]  # (input_ids, labels)

# The label value that PyTorch's cross-entropy (and so every HF causal LM) leaves out of the loss.
IGNORE_INDEX = -100


@dataclass
class TokenizedDataset:
    """Tokenized examples plus what happened on the way; indexable, so a Trainer can sample it."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    examples: int = 0  # lines read from the file
    tokens: int = 0  # tokens in the kept examples, after truncation
    label_tokens: int = 0  # of those, the ones the loss is computed on
    truncated: int = 0
    dropped: int = 0  # no label left after truncation (or none to begin with)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}

    def stats(self) -> dict[str, int]:
        """The counts, for the manifest and the model card."""
        return {
            "examples": self.examples,
            "kept": len(self),
            "tokens": self.tokens,
            "label_tokens": self.label_tokens,
            "truncated": self.truncated,
            "dropped": self.dropped,
        }


def load_tokenizer(base_model_path: Path, dataset_format: str) -> PreTrainedTokenizerBase:
    """Load the base model's tokenizer, with a pad token and, for chat data, a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(base_model_path, local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    if dataset_format == "chat" and not tokenizer.chat_template:
        # Set on the tokenizer, not just used, so the exported bundle formats prompts the way we trained.
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def load_dataset(
    path: Path,
    dataset_format: str,  # "chat" | "prompt_completion" | "text", as loraq.datasets detected it
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_len: int,
    train_on_inputs: bool,
    keep: Callable[[int], bool] | None = None,  # which examples (0-based, file order) to take; None: all
) -> TokenizedDataset:
    """Tokenize the records of a validated JSONL file, truncating to max_seq_len."""
    tokenize = _TOKENIZERS[dataset_format]
    dataset = TokenizedDataset()
    for index, record in enumerate(iter_examples(path)):
        if keep is not None and not keep(index):
            continue
        dataset.examples += 1
        input_ids, labels = tokenize(record, tokenizer)
        if train_on_inputs:
            labels = list(input_ids)
        if len(input_ids) > max_seq_len:
            dataset.truncated += 1
            input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
        # The first token is never predicted (labels shift by one inside the model), so it cannot count.
        label_tokens = sum(label != IGNORE_INDEX for label in labels[1:])
        if label_tokens == 0:
            dataset.dropped += 1
            continue
        dataset.input_ids.append(input_ids)
        dataset.labels.append(labels)
        dataset.tokens += len(input_ids)
        dataset.label_tokens += label_tokens
    if not dataset:
        raise ValueError(
            f"{path.stem} data: no example has a token to train on after truncation to "
            f"max_seq_len={max_seq_len}; raise max_seq_len or shorten the prompts"
        )
    return dataset


def count_examples(path: Path) -> int:
    return sum(1 for _ in iter_examples(path))


def tokenize_chat(record: Record, tokenizer: PreTrainedTokenizerBase) -> Example:
    """Render with the chat template; label the assistant turns whose weight is not 0."""
    messages = [{k: v for k, v in message.items() if k != "weight"} for message in record["messages"]]
    tools = record.get("tools")
    input_ids = _render_chat(tokenizer, messages, tools)
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, message in enumerate(record["messages"]):
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            start, end = _assistant_turn_span(tokenizer, messages, tools, i, input_ids)
            labels[start:end] = input_ids[start:end]
    return input_ids, labels


def tokenize_prompt_completion(record: Record, tokenizer: PreTrainedTokenizerBase) -> Example:
    """Prompt tokens (unlabelled) followed by completion tokens and EOS (labelled)."""
    prompt = tokenizer(record["prompt"])["input_ids"]
    completion = _with_eos(tokenizer(record["completion"], add_special_tokens=False)["input_ids"], tokenizer)
    return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion


def tokenize_text(record: Record, tokenizer: PreTrainedTokenizerBase) -> Example:
    """Plain text, every token labelled, ending in EOS so the model learns where documents stop."""
    input_ids = _with_eos(tokenizer(record["text"])["input_ids"], tokenizer)
    return input_ids, list(input_ids)


_TOKENIZERS: dict[str, Callable[[Record, PreTrainedTokenizerBase], Example]] = {
    "chat": tokenize_chat,
    "prompt_completion": tokenize_prompt_completion,
    "text": tokenize_text,
}


def _render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Record],
    tools: list[Any] | None,
    *,
    generation_prompt: bool = False,
) -> list[int]:
    # sanitize_control_tokens: a "<|im_end|>" typed inside a message is text, not a turn boundary.
    input_ids = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        add_generation_prompt=generation_prompt,
        return_dict=False,
        sanitize_control_tokens=True,
    )
    return cast(list[int], input_ids)


def _assistant_turn_span(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Record],
    tools: list[Any] | None,
    index: int,
    input_ids: list[int],
) -> tuple[int, int]:
    """Token span of assistant turn `index` in the full rendering: the tokens its own rendering adds.

    With a template that renders every prefix of a conversation as a prefix of the whole (ChatML,
    Llama 3, Mistral...), the span is exact. Otherwise only the tokens that both renderings agree
    on are labelled, as transformers' encode_message_with_chat_template does: never a prompt token.
    """
    before = _render_chat(tokenizer, messages[:index], tools, generation_prompt=True)
    through = _render_chat(tokenizer, messages[: index + 1], tools)
    start, end = _shared_prefix_length(input_ids, before), _shared_prefix_length(input_ids, through)
    if start < len(before) or end < len(through):
        logger.warning_once("the chat template renders turns differently in context: inexact assistant spans")
    return start, end


def _shared_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _with_eos(input_ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = tokenizer.eos_token_id
    return [*input_ids, eos] if eos is not None and input_ids[-1:] != [eos] else input_ids


@dataclass
class PackedDataset:
    """Examples packed into sequences of at most max_seq_len tokens; a Trainer samples it by sequence.

    Each sequence's position_ids restart at 0 for every example. Given position_ids, no attention
    mask and no KV cache (load_model turns it off), transformers builds a block-diagonal causal mask
    (masking_utils.find_packed_sequence_indices), so no token attends to another example's.
    """

    examples: TokenizedDataset
    packs: list[list[int]]  # example indices, one list per sequence
    max_seq_len: int

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for example in self.packs[index]:
            input_ids += self.examples.input_ids[example]
            # An example's first label would be predicted from the previous example's last token.
            labels += [IGNORE_INDEX, *self.examples.labels[example][1:]]
            position_ids += range(len(self.examples.input_ids[example]))
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}

    def stats(self) -> dict[str, Any]:
        """The example counts, plus how densely the sequences are filled."""
        return self.examples.stats() | {
            "sequences": len(self),
            "packing": {
                "examples_per_sequence": round(len(self.examples) / len(self), 3),
                "fill_ratio": round(self.examples.tokens / (len(self) * self.max_seq_len), 3),
            },
        }


TrainingData = TokenizedDataset | PackedDataset


def as_sequences(dataset: TokenizedDataset, *, packing: bool, max_seq_len: int) -> TrainingData:
    """The sequences training sees: one example each, or several packed up to max_seq_len."""
    if not packing:
        return dataset
    lengths = [len(input_ids) for input_ids in dataset.input_ids]
    return PackedDataset(dataset, pack_by_length(lengths, max_seq_len), max_seq_len)


def data_collator(dataset: TrainingData, pad_token_id: int) -> PaddingCollator | PackedCollator:
    packed = isinstance(dataset, PackedDataset)
    return PackedCollator(pad_token_id) if packed else PaddingCollator(pad_token_id)


@dataclass(frozen=True)
class PaddingCollator:
    """Right-pad a batch: input_ids with the pad token, labels with IGNORE_INDEX, plus the attention mask."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        input_ids = [feature["input_ids"] for feature in features]
        return {
            "input_ids": _right_padded(input_ids, self.pad_token_id),
            "labels": _right_padded([feature["labels"] for feature in features], IGNORE_INDEX),
            "attention_mask": _right_padded([[1] * len(row) for row in input_ids], 0),
        }


@dataclass(frozen=True)
class PackedCollator:
    """Right-pad packed sequences, with position_ids and no attention mask (which would hide the packing).

    The padding's positions restart at 0 too, so it is a segment of its own that no real token sees.
    One row per sequence, not transformers' DataCollatorWithFlattening's one row per batch: eager and
    sdpa attention build a dense mask, so a flattened batch of b sequences costs b times the attention.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        positions = [feature["position_ids"] for feature in features]
        width = max(len(row) for row in positions)
        return {
            "input_ids": _right_padded([feature["input_ids"] for feature in features], self.pad_token_id),
            "labels": _right_padded([feature["labels"] for feature in features], IGNORE_INDEX),
            "position_ids": torch.tensor([row + list(range(width - len(row))) for row in positions]),
        }


def _right_padded(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)
