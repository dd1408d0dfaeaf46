"""Sample answers: the inputs to answer, and greedy generations that leave training exactly as it was."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from transformers import GenerationConfig, PreTrainedTokenizerBase

from loraq.files.validation import iter_examples
from loraq.jobs.spec import held_out_indices
from loraq.tokens.encoding import ExampleTokenizer
from worker.training.contracts import TrainingRequest

# Without samples in the spec, this many validation examples are answered.
DEFAULT_SAMPLE_COUNT = 5


@dataclass(frozen=True)
class SampleInput:
    input: list[dict[str, Any]] | str  # what the client sees: the messages before the answer, or the prompt
    reference: str | None  # the answer the data gives, if any
    prompt_ids: list[int]  # the model's input, as training formats it, ending where the answer starts


def sample_inputs(request: TrainingRequest, example_tokenizer: ExampleTokenizer) -> list[SampleInput]:
    """The spec's samples, else the first validation examples (none for plain text: nothing to answer)."""
    if request.samples is not None:
        records = request.samples
    elif request.dataset_format == "text":
        records = []
    else:
        records = first_validation_records(request, DEFAULT_SAMPLE_COUNT)
    return [sample_input(record, example_tokenizer) for record in records]


def first_validation_records(request: TrainingRequest, count: int) -> list[dict[str, Any]]:
    """The first `count` validation examples, in file order: of the validation file, or held out."""
    if request.validation_path is not None:
        return list(islice(iter_examples(request.validation_path), count))
    split = request.hyperparameters.validation_split
    if split is None:
        return []
    examples = list(iter_examples(request.train_path))
    held_out = sorted(held_out_indices(len(examples), split, request.seed))[:count]
    return [examples[index] for index in held_out]


def sample_input(record: dict[str, Any], example_tokenizer: ExampleTokenizer) -> SampleInput:
    """A record of the training formats as a generation prompt and its reference answer."""
    if "messages" in record:
        messages = [{key: value for key, value in m.items() if key != "weight"} for m in record["messages"]]
        answered = messages[-1]["role"] == "assistant"
        prompt = messages[:-1] if answered else messages
        ids = example_tokenizer.encode_chat(prompt, record.get("tools"), add_generation_prompt=True)
        return SampleInput(prompt, messages[-1].get("content") if answered else None, ids)
    # As training encodes a prompt: the tokenizer's own special tokens (a BOS) included.
    ids = example_tokenizer.tokenizer.encode(record["prompt"]).ids
    return SampleInput(record["prompt"], record.get("completion"), ids)


def generate_answers(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[SampleInput],
    *,
    max_new_tokens: int,
    base: bool = False,  # the base model's answers: the adapter disabled
    tick: Callable[[], None] = lambda: None,  # called after each answer (progress reports)
) -> list[str]:
    """Greedy answers, decoded without special tokens; the model's mode and every RNG left as they were."""
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,  # training turned the cache off; generating without it is quadratic
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    answers: list[str] = []
    with inference(model, base=base):
        for sample in inputs:
            input_ids = torch.tensor([sample.prompt_ids], device=model.device)
            output = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
            )
            new_tokens = output[0, input_ids.shape[1] :].tolist()
            answers.append(str(tokenizer.decode(new_tokens, skip_special_tokens=True)))
            tick()
    return answers


@contextmanager
def inference(model: PeftModel, *, base: bool = False) -> Iterator[None]:
    """Eval mode without gradients (the adapter disabled, if base), then back: training goes on unchanged.

    bitsandbytes' eval-mode repacking of 4-bit weights is off already (model.keep_4bit_layers_trainable).
    """
    was_training = model.training
    model.eval()
    try:
        with preserved_rng(), torch.no_grad(), model.disable_adapter() if base else nullcontext():
            yield
    finally:
        model.train(was_training)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore every random generator training draws from: whatever runs inside changes none of them."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
