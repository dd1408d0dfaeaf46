"""A training file's examples as training sees them: truncated, masked, counted; for worker and estimate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraq.files.validation import iter_examples
from loraq.tokens.encoding import IGNORE_INDEX, ExampleTokenizer


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
    # Every read example's length before truncation, dropped ones too: what max_seq_len cuts.
    full_lengths: list[int] = field(default_factory=list)

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


def tokenize_file(
    path: Path,
    dataset_format: str,  # "chat" | "prompt_completion" | "text", as validation detected it
    tokenizer: ExampleTokenizer,
    *,
    max_seq_len: int,
    train_on_inputs: bool,
    keep: Callable[[int], bool] | None = None,  # which examples (0-based, file order) to take; None: all
) -> TokenizedDataset:
    """Tokenize the records of a validated JSONL file, truncated to max_seq_len.

    train_on_inputs labels every token. An example keeps its first max_seq_len tokens, and is
    dropped if none of them but the first has a label: the first token is never predicted (labels
    shift by one inside the model).
    """
    dataset = TokenizedDataset()
    for index, record in enumerate(iter_examples(path)):
        if keep is not None and not keep(index):
            continue
        dataset.examples += 1
        full_ids, full_labels = tokenizer.tokenize(record, dataset_format, train_on_inputs=train_on_inputs)
        dataset.full_lengths.append(len(full_ids))
        dataset.truncated += len(full_ids) > max_seq_len
        input_ids, labels, label_tokens = trained_part(full_ids, full_labels, max_seq_len)
        if label_tokens == 0:
            dataset.dropped += 1
            continue
        dataset.input_ids.append(input_ids)
        dataset.labels.append(labels)
        dataset.tokens += len(input_ids)
        dataset.label_tokens += label_tokens
    return dataset


def trained_part(
    input_ids: list[int], labels: list[int], max_seq_len: int
) -> tuple[list[int], list[int], int]:
    """What training keeps of an example: its first max_seq_len tokens and labels, and how many of those
    labels count (not the first: labels shift by one inside the model, so it is never predicted)."""
    input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    return input_ids, labels, sum(label != IGNORE_INDEX for label in labels[1:])


def has_trainable_example(
    records: Iterable[dict[str, Any]],
    dataset_format: str,
    tokenizer: ExampleTokenizer,
    *,
    max_seq_len: int,
    train_on_inputs: bool,
    keep: Callable[[int], bool] | None = None,
    budget_seconds: float,
) -> bool | None:
    """Whether some example keeps a token to train on; None when the budget ran out before an answer.

    Stops at the first such example, so a good file costs one example; only a file with nothing to
    train on is read further, and never for longer than the budget.
    """
    deadline = time.monotonic() + budget_seconds
    for index, record in enumerate(records):
        if keep is not None and not keep(index):
            continue
        input_ids, labels = tokenizer.tokenize(record, dataset_format, train_on_inputs=train_on_inputs)
        if trained_part(input_ids, labels, max_seq_len)[2]:
            return True
        if time.monotonic() > deadline:
            return None
    return False


def count_examples(path: Path) -> int:
    """Examples (lines) in a validated JSONL file."""
    return sum(1 for _ in iter_examples(path))
