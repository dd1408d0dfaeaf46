"""Answer chats: base models kept loaded, ft: adapters switched on them, and a plain sampling loop.

A chat process keeps the few most recently used bases (LORAQ_CHAT_MAX_BASE_MODELS) at full precision,
and on each the few most recently used adapters (LORAQ_CHAT_MAX_ADAPTERS), switched with peft's
set_adapter: a request for a loaded adapter loads nothing. A QLoRA adapter runs on the full-precision base
too: it was trained against the dequantized weights, which the full-precision ones are.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from loraq.base_models.catalog import resolve_base_model
from loraq.core.errors import InvalidRequest
from loraq.core.settings import Settings
from loraq.storage.archives import unpack
from loraq.storage.scratch import scratch_dir
from loraq.storage.stores import ArtifactStore
from loraq.tokens.chat_template import CHATML_TEMPLATE
from worker.training.model import load_base, pick_device, resolve_compute_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatJob:
    """One request as the worker answers it (a copy of its row's fields)."""

    base_model: str
    adapter_id: str | None  # the ft: model's job id: its adapter's name on the base
    adapter_key: str | None  # its bundle in the artifact store
    generation: dict[str, Any]  # loraq.chat.spec.ChatCompletionCreate.generation


@dataclass
class Answer:
    content: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class LoadedBase:
    model: PreTrainedModel | PeftModel  # a PeftModel once an adapter is loaded on it
    tokenizer: PreTrainedTokenizerBase
    # Loaded adapters, least recently used first, each with its bundle's tokenizer (what it trained with).
    adapters: OrderedDict[str, PreTrainedTokenizerBase] = field(default_factory=OrderedDict)


class ChatModels:
    """The models one chat process keeps loaded, and how often it loaded them (for the "loraq" counters)."""

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        transformers_logging.disable_progress_bar()  # Celery would log each bar's lines as warnings
        self.settings = settings
        self.store = store
        self.device = pick_device()
        self.dtype = resolve_compute_dtype("auto", self.device)
        self.bases: OrderedDict[str, LoadedBase] = OrderedDict()
        self.base_loads = 0
        self.adapter_loads = 0

    def answer(self, job: ChatJob) -> Answer:
        base = self._base(job.base_model)
        if job.adapter_id is None:
            tokenizer = base.tokenizer
            # A base asked for by name answers as itself, whatever adapters are loaded on it.
            quiet: AbstractContextManager[Any] = (
                base.model.disable_adapter() if isinstance(base.model, PeftModel) else nullcontext()
            )
        else:
            assert job.adapter_key is not None
            tokenizer = self._adapter(base, job.adapter_id, job.adapter_key)
            quiet = nullcontext()
        with quiet:
            return generate(base.model, tokenizer, job.generation, self.device)

    def _base(self, name: str) -> LoadedBase:
        if name in self.bases:
            self.bases.move_to_end(name)
            return self.bases[name]
        while len(self.bases) >= self.settings.chat_max_base_models:
            _, evicted = self.bases.popitem(last=False)
            del evicted
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        found = resolve_base_model(name, self.settings)
        path = found.path or Path(found.name)
        model = load_base(path, self.dtype, self.device).eval()
        loaded = LoadedBase(model=model, tokenizer=_with_template(AutoTokenizer.from_pretrained(path)))
        self.bases[name] = loaded
        self.base_loads += 1
        log.info("chat: loaded base model %s on %s (%s)", name, self.device, self.dtype)
        return loaded

    def _adapter(self, base: LoadedBase, adapter_id: str, key: str) -> PreTrainedTokenizerBase:
        """Make the adapter the active one on `base`, loading it first if needed; its tokenizer."""
        if adapter_id not in base.adapters:
            with scratch_dir(self.settings.scratch_dir, "chat-adapter") as scratch:
                archive = scratch / "adapter.tar.gz"
                self.store.download(key, archive)
                bundle = unpack(archive, scratch / "adapter")
                if isinstance(base.model, PeftModel):
                    base.model.load_adapter(str(bundle), adapter_name=adapter_id)
                else:
                    base.model = PeftModel.from_pretrained(base.model, str(bundle), adapter_name=adapter_id)
                base.model.eval()
                base.adapters[adapter_id] = _with_template(AutoTokenizer.from_pretrained(bundle))
            self.adapter_loads += 1
            log.info("chat: loaded adapter %s", adapter_id)
        base.adapters.move_to_end(adapter_id)
        assert isinstance(base.model, PeftModel)
        base.model.set_adapter(adapter_id)
        while len(base.adapters) > self.settings.chat_max_adapters:
            evicted, _ = base.adapters.popitem(last=False)
            base.model.delete_adapter(evicted)
        return base.adapters[adapter_id]


def _with_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # A base without a chat template trains with loraq's ChatML (loraq.tokens), so it chats with it too.
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@torch.inference_mode()
def generate(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    generation: dict[str, Any],
    device: torch.device,
) -> Answer:
    """Greedy at temperature 0, else sampled (temperature, top_p, seeded); ends at the end of the turn, a
    stop string (cut off), or max_new_tokens."""
    encoded: Any = tokenizer.apply_chat_template(
        generation["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt = encoded["input_ids"].to(device)
    prompt_tokens = int(prompt.shape[1])
    room = _context_length(model, tokenizer) - prompt_tokens
    if room <= 0:
        raise InvalidRequest(
            f"the messages are {prompt_tokens} tokens, more than this model's context holds",
            param="messages",
            code="context_length_exceeded",
        )
    ends = _end_of_turn_ids(model, tokenizer)
    stops: list[str] = generation["stop"]
    sampler = _Sampler(generation["temperature"], generation["top_p"], generation["seed"], device)
    tokens: list[int] = []
    finish_reason, cut = "length", None
    inputs, past = prompt, None
    for _ in range(min(generation["max_new_tokens"], room)):
        output = model(input_ids=inputs, past_key_values=past, use_cache=True)
        past = output.past_key_values
        token = sampler.pick(output.logits[0, -1])
        tokens.append(token)
        if token in ends:
            finish_reason = "stop"
            break
        if stops:
            text = _decode(tokenizer, tokens)
            cut = min((text.find(stop) for stop in stops if stop in text), default=None)
            if cut is not None:
                finish_reason = "stop"
                break
        inputs = torch.tensor([[token]], device=device)
    text = _decode(tokenizer, tokens)
    return Answer(
        content=text if cut is None else text[:cut],
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(tokens),
    )


def _decode(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> str:
    return str(tokenizer.decode(tokens, skip_special_tokens=True))


class _Sampler:
    def __init__(self, temperature: float, top_p: float, seed: int | None, device: torch.device) -> None:
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def pick(self, logits: torch.Tensor) -> int:
        if self.temperature == 0:
            return int(logits.argmax())
        probabilities = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            ordered, order = probabilities.sort(descending=True)
            # Keep the most likely tokens whose mass before them is under top_p: at least the first.
            kept = ordered.cumsum(0) - ordered < self.top_p
            probabilities = torch.zeros_like(probabilities).scatter(0, order[kept], ordered[kept])
        return int(torch.multinomial(probabilities, 1, generator=self.generator))


def _context_length(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min(int(limit) for limit in limits if isinstance(limit, int) and limit > 0)


def _end_of_turn_ids(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")  # ChatML's, if the vocabulary has it
    if end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return {i for i in ids if isinstance(i, int)}
