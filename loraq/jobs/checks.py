"""What a create refuses before anything runs, because the worker would fail on it minutes later."""

from __future__ import annotations

from loraq.base_models.catalog import BaseLLM
from loraq.base_models.layers import linear_layer_names, unmatched_targets
from loraq.core.errors import InvalidRequest
from loraq.files.tables import File
from loraq.files.validation import examples_of_chunks
from loraq.jobs.spec import AdapterSpec, JobCreate, ResolvedHyperparameters, held_out_indices
from loraq.storage.stores import ArtifactStore
from loraq.tokens.chat_template import ChatTemplateError
from loraq.tokens.counting import has_trainable_example
from loraq.tokens.encoding import tokenizer_of

# How long a create may spend looking for an example with something to train on (a good file: one example).
CREATE_CHECK_SECONDS = 2.0

# What makes an adapter's weights fit another's: a job that trains a fine-tuned model further keeps them.
ADAPTER_SHAPE = ("r", "alpha", "target_modules", "use_rslora", "use_dora")


def continued_adapter(requested: AdapterSpec | None, parent: AdapterSpec, *, model: str) -> AdapterSpec:
    """The adapter of a job that trains `model` further: the parent's shape, and what the request sets else.

    A request with no adapter (None) takes the parent's whole; one that sets a shape field to another
    value is refused, since the parent's weights would not fit.
    """
    if requested is None:
        return parent
    for name in ADAPTER_SHAPE:
        if name in requested.model_fields_set and getattr(requested, name) != getattr(parent, name):
            raise InvalidRequest(
                f"adapter.{name}: {model} was trained with {name}={getattr(parent, name)!r}; training it "
                "further keeps its adapter's shape (leave the field out, or give the same value)",
                param=f"adapter.{name}",
            )
    return requested.model_copy(update={name: getattr(parent, name) for name in ADAPTER_SHAPE})


def check_something_to_train_on(
    request: JobCreate,
    base: BaseLLM,
    training: File,
    resolved: ResolvedHyperparameters,
    *,
    seed: int,
    store: ArtifactStore,
) -> None:
    """400 when no training example keeps a token to train on after truncation, or one cannot be rendered.

    Tokenized as the worker will (loraq.tokens), reading the file only until a trainable example turns
    up, for at most CREATE_CHECK_SECONDS: past that the worker checks the rest.
    """
    if base.path is None:
        return  # a hub model's tokenizer is only on its worker
    held_out = held_out_indices(training.examples or 0, resolved.validation_split, seed)
    try:
        verdict = has_trainable_example(
            examples_of_chunks(store.iter_bytes(training.storage_key)),
            training.format or "chat",
            tokenizer_of(base.path),
            max_seq_len=resolved.max_seq_len,
            train_on_inputs=resolved.train_on_inputs,
            keep=lambda index: index not in held_out,
            budget_seconds=CREATE_CHECK_SECONDS,
        )
    except ChatTemplateError as error:
        raise InvalidRequest(
            f"training_file: {base.name}'s chat template refuses an example: {error}", param="training_file"
        ) from error
    if verdict is False:
        raise InvalidRequest(
            f"no example of {training.id} keeps a token to train on after truncation to "
            f"max_seq_len={resolved.max_seq_len}; raise max_seq_len or shorten the prompts",
            param=request.hyperparameter_param("max_seq_len"),
        )


def check_targets_exist(adapter: AdapterSpec, base: BaseLLM) -> None:
    """400 when a target names no linear layer of a local base (a hub model is checked by its worker)."""
    targets = adapter.target_modules
    if base.path is None or targets == "all-linear":
        return
    missing = unmatched_targets(targets, linear_layer_names(base.path))
    if missing:
        layers = sorted({name.rsplit(".", 1)[-1] for name in linear_layer_names(base.path)})
        raise InvalidRequest(
            f"adapter.target_modules: {', '.join(missing)} match no linear layer of {base.name}; "
            f'its linear layers are {", ".join(layers)} (or use "all-linear")',
            param="adapter.target_modules",
        )
