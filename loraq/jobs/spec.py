"""The job spec: what a client may ask of a training run, with bounds, and its resolved form."""

from __future__ import annotations

import math
import random
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, model_validator
from pydantic_core import PydanticCustomError

from loraq.core.text import ID_PATTERN, PlainText

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]

# The base learning rate that learning_rate_multiplier scales: a common LoRA default.
BASE_LEARNING_RATE = 2e-4

Auto = Literal["auto"]


class _Strict(BaseModel):
    # No coercion: "3" is not 3, true is not 1, "yes" is not a bool (an int still does for a float).
    model_config = ConfigDict(extra="forbid", strict=True)


def broken_rule(message: str, *, field: str | None = None) -> PydanticCustomError:
    """A rule between fields, reported at `field` (a dotted path from the model that checks the rule).

    The API names `field` as the error's param: the place a client has to change.
    """
    return PydanticCustomError("invalid_combination", message, {"field": field} if field else None)


# The bounds of the fields that "auto" may stand for, shared by the requested and resolved forms.
Epochs = Annotated[int, Field(ge=1, le=50)]
BatchSize = Annotated[int, Field(ge=1, le=256)]
LoggingSteps = Annotated[int, Field(ge=1, le=10_000)]
# Each logged step is a metrics event row (and a point of the dashboard's curve): "auto" keeps a long
# job's rows bounded instead of one per step forever.
MAX_METRICS_POINTS = 1000
LearningRateMultiplier = Annotated[float, Field(gt=0, le=100)]
LearningRate = Annotated[float, Field(gt=0, le=1)]


class Hyperparameters(_Strict):
    """OpenAI's supervised hyperparameters plus loraq's additions; "auto" is resolved per dataset.

    Combination rules (early stopping needs validation data, ...) are checked once, at create,
    by JobCreate; `resolve` then turns this into the ResolvedHyperparameters a worker trains with.
    """

    n_epochs: Epochs | Auto = "auto"
    batch_size: BatchSize | Auto = "auto"
    learning_rate_multiplier: LearningRateMultiplier | Auto = "auto"
    learning_rate: LearningRate | None = Field(
        default=None, description="Absolute learning rate; overrides learning_rate_multiplier."
    )
    max_seq_len: Annotated[int, Field(ge=16, le=32768)] = 1024
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    warmup_ratio: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0, le=100)] = 1.0
    save_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Checkpoint every N optimizer steps; None: at the end of each epoch."
    )
    save_total_limit: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=3,
        description="Keep the downloadable adapters of the newest N checkpoints; older ones are deleted "
        "(they count against the project's storage). The final result is always kept.",
    )
    logging_steps: LoggingSteps | Auto = Field(
        default="auto",
        description="Record the training metrics every N optimizer steps; auto: every step, or every few "
        f"steps on a long job so it records about {MAX_METRICS_POINTS} of them at most.",
    )
    train_on_inputs: bool = Field(
        default=False, description="Compute the loss on prompt tokens too, not only on answers."
    )
    packing: bool = Field(
        default=False,
        description="Pack several short examples into each max_seq_len sequence; no token attends to "
        "another example's.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: far less memory, ~30% slower."
    )
    eval_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Evaluate every N optimizer steps; None: whenever a checkpoint is saved."
    )
    early_stopping_patience: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None,
        description="Stop once the eval loss has not improved for this many evaluations, and keep the best "
        "checkpoint's adapter; needs validation data.",
    )
    validation_split: Annotated[float, Field(gt=0, le=0.5)] | None = Field(
        default=None,
        description="Hold out this fraction of the training file (picked with the job's seed) for "
        "validation, when there is no validation_file.",
    )

    def resolve(self, *, n_examples: int) -> ResolvedHyperparameters:
        """Replace "auto" by values from the size of the training set (after any validation_split).

        The rule: n_epochs gives small datasets enough passes to learn (about 100 example
        visits, 1 to 10 epochs); batch_size grows with the data (1 per 32 examples,
        1 to 8); the multiplier is 1, so the learning rate is BASE_LEARNING_RATE. Evaluations
        come with the checkpoints unless eval_steps says otherwise. logging_steps spreads at most
        MAX_METRICS_POINTS over the job's steps (counted unpacked: packing only makes fewer).
        """
        n = max(n_examples - held_out_count(n_examples, self.validation_split), 1)
        multiplier = 1.0 if self.learning_rate_multiplier == "auto" else self.learning_rate_multiplier
        n_epochs = self.n_epochs if self.n_epochs != "auto" else min(10, max(1, math.ceil(100 / n)))
        batch_size = self.batch_size if self.batch_size != "auto" else min(8, max(1, n // 32))
        steps = n_epochs * math.ceil(math.ceil(n / batch_size) / self.gradient_accumulation_steps)
        return ResolvedHyperparameters.model_validate(
            self.model_dump()
            | {
                "n_epochs": n_epochs,
                "batch_size": batch_size,
                "logging_steps": (
                    self.logging_steps
                    if self.logging_steps != "auto"
                    else min(10_000, max(1, math.ceil(steps / MAX_METRICS_POINTS)))
                ),
                "learning_rate_multiplier": multiplier,
                "learning_rate": self.learning_rate or BASE_LEARNING_RATE * multiplier,
                "eval_steps": self.eval_steps or self.save_steps,
            }
        )


class ResolvedHyperparameters(Hyperparameters):
    """The same hyperparameters with every "auto" replaced by a number: what the worker trains with."""

    n_epochs: Epochs
    batch_size: BatchSize
    learning_rate_multiplier: LearningRateMultiplier
    learning_rate: LearningRate
    logging_steps: LoggingSteps


def held_out_count(n_examples: int, validation_split: float | None) -> int:
    """How many of n examples validation_split holds out: the nearest whole number, at least 1, never all."""
    if validation_split is None or n_examples < 2:
        return 0
    return min(n_examples - 1, max(1, round(n_examples * validation_split)))


def held_out_indices(n_examples: int, validation_split: float | None, seed: int) -> frozenset[int]:
    """Which examples (0-based, in file order) validation_split holds out: a seeded, repeatable sample."""
    count = held_out_count(n_examples, validation_split)
    return frozenset(random.Random(seed).sample(range(n_examples), count))


class Quantization(_Strict):
    """How the frozen base is stored: 4-bit (NF4/FP4) or 8-bit through bitsandbytes."""

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on a GPU that supports it, else float32."
    )


class AdapterSpec(_Strict):
    """loraq's `adapter` object: the LoRA/QLoRA controls."""

    type: Literal["lora", "qlora"] = "qlora"
    r: Annotated[int, Field(ge=1, le=1024)] = 8
    alpha: Annotated[float, Field(gt=0, le=4096)] = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: (
        Annotated[
            list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,64}$")]], Field(min_length=1, max_length=64)
        ]
        | Literal["all-linear"]
    ) = Field(default_factory=lambda: list(ATTENTION_PROJECTIONS))
    quantization: Quantization | None = None
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="For lora: the dtype the base is loaded and computed in."
    )
    use_rslora: bool = Field(
        default=False, description="Rank-stabilized LoRA: scale the update by alpha/sqrt(r), not alpha/r."
    )
    use_dora: bool = Field(
        default=False,
        description="DoRA: learn each weight's magnitude apart from its LoRA direction; slower, often better "
        "at low r. Not with an 8-bit base.",
    )

    @model_validator(mode="after")
    def _quantization_matches_type(self) -> AdapterSpec:
        if self.type == "lora" and self.quantization is not None:
            raise broken_rule("quantization applies only to type 'qlora'; a 'lora' base is not quantized")
        if self.type == "qlora" and self.quantization is None:
            self.quantization = Quantization(compute_dtype=self.compute_dtype)
        if self.use_dora and self.quantization is not None and self.quantization.bits == 8:
            # peft 0.21's DoRA re-wraps an 8-bit weight on CPU, and bitsandbytes 0.50 then loses its
            # int8 scales: the second training step fails.
            raise broken_rule(
                "use_dora does not work with an 8-bit base; use 4 bits or type 'lora'", field="use_dora"
            )
        return self

    @property
    def effective_compute_dtype(self) -> str:
        """The requested compute dtype ("auto" still unresolved: that needs the device)."""
        return self.quantization.compute_dtype if self.quantization else self.compute_dtype


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(_Strict):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod = Field(default_factory=SupervisedMethod)


class ExportSpec(_Strict):
    """What the job exports besides the adapter bundle."""

    merged: bool = Field(
        default=False,
        description="Also export the base with the adapter merged in, at full precision, as safetensors.",
    )


SampleText = Annotated[PlainText, Field(max_length=32_000)]


class SampleMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: SampleText


class ChatSample(_Strict):
    """A conversation to continue; a final assistant message, if any, is the reference answer."""

    messages: Annotated[list[SampleMessage], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _something_to_answer(self) -> ChatSample:
        if self.messages[-1].role == "assistant" and len(self.messages) == 1:
            raise broken_rule("needs a message to answer before the final assistant one", field="messages")
        return self

    @property
    def reference(self) -> str | None:
        return self.messages[-1].content if self.messages[-1].role == "assistant" else None


class PromptSample(_Strict):
    """A prompt to complete; the completion, if any, is the reference answer."""

    prompt: Annotated[SampleText, Field(min_length=1)]
    completion: SampleText | None = None

    @property
    def reference(self) -> str | None:
        return self.completion


def _sample_format(value: Any) -> str:
    return "chat-sample" if isinstance(value, dict) and "messages" in value else "prompt-sample"


# Tagged by its keys, so an error names the one format the client meant, not both. The tags are no
# sample's keys: the API's error locations skip a name the body lacks.
Sample = Annotated[
    Annotated[ChatSample, Tag("chat-sample")] | Annotated[PromptSample, Tag("prompt-sample")],
    Discriminator(_sample_format),
]
MAX_SAMPLES = 20
DEFAULT_SAMPLE_MAX_NEW_TOKENS = 64


MetadataKey = Annotated[PlainText, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[PlainText, Field(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
FileId = Annotated[str, Field(pattern=ID_PATTERN)]


class JobCreate(_Strict):
    """The body of POST /v1/fine_tuning/jobs: everything a client may set, nothing the server owns."""

    model: Annotated[PlainText, Field(min_length=1, max_length=255)]
    training_file: FileId
    validation_file: FileId | None = None
    suffix: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Metadata | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = Field(
        default=None, description="OpenAI's older top-level form; method.supervised.hyperparameters wins."
    )
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    samples: Annotated[list[Sample], Field(max_length=MAX_SAMPLES)] | None = Field(
        default=None,
        description="Inputs the base and the tuned model answer greedily, to compare (GET .../samples); "
        "default: the first 5 validation examples.",
    )
    sample_max_new_tokens: Annotated[int, Field(ge=1, le=256)] = DEFAULT_SAMPLE_MAX_NEW_TOKENS
    # Where the client put its hyperparameters, so that an error names the field it sent.
    _hyperparameters_at: str = PrivateAttr(default="method.supervised.hyperparameters")

    @model_validator(mode="after")
    def _one_place_for_hyperparameters(self) -> JobCreate:
        if self.method is not None and self.hyperparameters is not None:
            raise broken_rule(
                "give hyperparameters in method.supervised.hyperparameters or at the top, not both",
                field="hyperparameters",
            )
        if self.method is None:
            if self.hyperparameters is not None:
                self._hyperparameters_at = "hyperparameters"
            self.method = Method(
                supervised=SupervisedMethod(hyperparameters=self.hyperparameters or Hyperparameters())
            )
            self.hyperparameters = None
        self._validation_data_is_consistent(self._hyperparameters_at)
        return self

    def hyperparameter_param(self, name: str) -> str:
        """The request's path to a hyperparameter, where the client gave it: an error's param."""
        return f"{self._hyperparameters_at}.{name}"

    def _validation_data_is_consistent(self, given_at: str) -> None:
        hp = self.requested_hyperparameters
        if self.validation_file is not None and hp.validation_split is not None:
            raise broken_rule(
                "give a validation_file or a validation_split, not both", field=f"{given_at}.validation_split"
            )
        has_validation = self.validation_file is not None or hp.validation_split is not None
        if not has_validation and hp.early_stopping_patience is not None:
            raise broken_rule(
                "early_stopping_patience needs a validation_file or a validation_split",
                field=f"{given_at}.early_stopping_patience",
            )
        if not has_validation and hp.eval_steps is not None:
            raise broken_rule(
                "eval_steps needs a validation_file or a validation_split", field=f"{given_at}.eval_steps"
            )
        # Early stopping keeps the best evaluated checkpoint, so every checkpoint must fall on an evaluation.
        if (
            hp.early_stopping_patience is not None
            and hp.eval_steps is not None
            and (hp.save_steps is None or hp.save_steps % hp.eval_steps)
        ):
            raise broken_rule(
                "with early_stopping_patience, save_steps must be a multiple of eval_steps",
                field=f"{given_at}.save_steps",
            )

    @property
    def requested_hyperparameters(self) -> Hyperparameters:
        assert self.method is not None  # set by the validator
        return self.method.supervised.hyperparameters
