"""Validated JSONL in, tokenized examples with loss labels out: loss only where the model should learn.

The tokenization itself is loraq.tokens', which the job estimate uses too: both count the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from loraq.tokens.chat_template import CHATML_TEMPLATE
from loraq.tokens.counting import TokenizedDataset, count_examples, tokenize_file
from loraq.tokens.encoding import IGNORE_INDEX, ExampleTokenizer
from loraq.tokens.packing import pack_by_length

__all__ = [
    "IGNORE_INDEX",
    "PackedDataset",
    "TokenizedDataset",
    "TrainingData",
    "as_sequences",
    "count_examples",
    "data_collator",
    "load_dataset",
    "load_tokenizer",
]


def load_tokenizer(base_model_path: Path, dataset_format: str) -> PreTrainedTokenizerBase:
    """Load the base model's tokenizer, with a pad token and, for chat data, a chat template.

    Training tokenizes with loraq.tokens; this one gives the pad id and goes into the bundle.
    """
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
    dataset_format: str,  # "chat" | "prompt_completion" | "text", as loraq.files.validation detected it
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_len: int,
    train_on_inputs: bool,
    keep: Callable[[int], bool] | None = None,  # which examples (0-based, file order) to take; None: all
    example_tokenizer: ExampleTokenizer | None = None,  # default: the one of tokenizer's model directory
) -> TokenizedDataset:
    """Tokenize the records of a validated JSONL file, truncating to max_seq_len; see tokenize_file."""
    if example_tokenizer is None:
        example_tokenizer = ExampleTokenizer.from_model_dir(Path(tokenizer.name_or_path))
    dataset = tokenize_file(
        path,
        dataset_format,
        example_tokenizer,
        max_seq_len=max_seq_len,
        train_on_inputs=train_on_inputs,
        keep=keep,
    )
    if not dataset:
        raise ValueError(
            f"{path.stem} data: no example has a token to train on after truncation to "
            f"max_seq_len={max_seq_len}; raise max_seq_len or shorten the prompts"
        )
    return dataset


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
