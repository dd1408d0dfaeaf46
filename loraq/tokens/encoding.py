"""The one tokenization of a training example, for the worker and the estimate: ids and loss labels.

Torch-free and transformers-free (the API process imports it): the `tokenizers` library reads the
base's tokenizer.json and jinja2 renders its chat template, as transformers' fast tokenizers and
apply_chat_template(..., sanitize_control_tokens=True) do; tests/test_tokens.py holds the two equal.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from loraq.tokens.chat_template import ChatTemplateError, chat_templates, render_chat, template_literals

logger = logging.getLogger(__name__)

Record = dict[str, Any]
Example = tuple[list[int], list[int]]  # (input_ids, labels)

# The label value that PyTorch's cross-entropy (and so every HF causal LM) leaves out of the loss.
IGNORE_INDEX = -100

# Private-use characters wrapped around the control tokens found in an example's own text, so that the
# encoder tells "<|im_end|>" typed by a user (plain text) from the one the template writes (a turn's end).
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"


class ExampleTokenizer:
    """Tokenizes training examples as the worker trains on them and inference formats prompts."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any], templates: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.templates = templates
        special = _named_special_tokens(config)
        extra = config.get("extra_special_tokens")
        extra_tokens = [_token_text(token) for token in extra] if isinstance(extra, list) else []
        # As transformers does on load: every special token the config names is an added special token.
        _add_special_tokens(tokenizer, [*special.values(), *(token for token in extra_tokens if token)])
        # A BOS (or EOS) that every text gets comes from tokenizer.json's post-processor: with that file,
        # transformers ignores tokenizer_config.json's add_bos_token and add_eos_token too.
        eos = special.get("eos_token")
        self.eos_token_id = tokenizer.token_to_id(eos) if eos else None
        # The bundle's tokenizer gets EOS as its pad token when the base has none: templates see it so.
        self.template_variables = {"pad_token": eos, **special} if eos else special
        added = tokenizer.get_added_tokens_decoder().values()
        self._added_tokens = [(token.content, bool(token.special)) for token in added]
        listed = config.get("chat_control_tokens")
        self._listed_control_tokens = frozenset(listed) if isinstance(listed, list) else None
        self._markers = re.compile(
            f"{_MARK_START}({_alternatives(content for content, _ in self._added_tokens)}){_MARK_END}"
            f"|[{_MARK_START}{_MARK_END}]"
        )
        self._control_tokens: dict[str, re.Pattern[str]] = {}
        self._newline_ids = self._encode("\n")
        self._warned_inexact_spans = False
        self._tokenizers: dict[str, Callable[[Record], Example]] = {
            "chat": self._tokenize_chat,
            "prompt_completion": self._tokenize_prompt_completion,
            "text": self._tokenize_text,
        }

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ExampleTokenizer:
        """The tokenizer of a base model directory: tokenizer.json, tokenizer_config.json, chat templates."""
        config = _read_json(model_dir / "tokenizer_config.json")
        # Older models keep their special tokens in special_tokens_map.json; the config wins.
        legacy = _read_json(model_dir / "special_tokens_map.json")
        config = {key: value for key, value in legacy.items() if key.endswith("_token")} | config
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return cls(tokenizer, config, chat_templates(model_dir, config))

    def tokenize(self, record: Record, dataset_format: str, *, train_on_inputs: bool = False) -> Example:
        """An example's (input_ids, labels), whole: IGNORE_INDEX where there is nothing to learn.

        chat: the conversation as the chat template renders it; the assistant turns whose weight is
        not 0 labelled. prompt_completion: the prompt unlabelled, then the completion and EOS labelled.
        text: all of it plus EOS, labelled. train_on_inputs: every token labelled. Raises
        ChatTemplateError (a ValueError) when the template cannot render the example.
        """
        if train_on_inputs and dataset_format == "chat":  # no assistant spans to find
            input_ids = self.encode_chat(_unweighted(record["messages"]), record.get("tools"))
            return input_ids, list(input_ids)
        input_ids, labels = self._tokenizers[dataset_format](record)
        return input_ids, list(input_ids) if train_on_inputs else labels

    def encode_chat(
        self,
        messages: list[Record],
        tools: list[Any] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> list[int]:
        """A conversation's ids, as apply_chat_template(..., sanitize_control_tokens=True) gives them."""
        if tools is not None:
            for index, tool in enumerate(tools):
                if not isinstance(tool, dict):
                    raise ChatTemplateError(
                        f"tools[{index}] must be a JSON object (a tool's schema), not {tool!r}"
                    )
        template = (
            self.templates.get("tool_use" if tools is not None else "default") or self.templates["default"]
        )
        control_tokens = self._control_tokens_in(template)
        # Like transformers: a None value is an absent key (templates would print "None").
        messages = [
            {key: value for key, value in message.items() if value is not None} for message in messages
        ]
        text = render_chat(
            template,
            _marked(messages, control_tokens),
            tools=_marked(tools, control_tokens),
            add_generation_prompt=add_generation_prompt,
            variables=self.template_variables,
        )
        return self._encode_marked(text)

    # --- the three formats ------------------------------------------------------------------------------

    def _tokenize_chat(self, record: Record) -> Example:
        messages = _unweighted(record["messages"])
        tools = record.get("tools")
        input_ids = self.encode_chat(messages, tools)
        labels = [IGNORE_INDEX] * len(input_ids)
        for index, message in enumerate(record["messages"]):
            if message["role"] == "assistant" and message.get("weight", 1) != 0:
                start, end = self._assistant_turn_span(messages, tools, index, input_ids)
                labels[start:end] = input_ids[start:end]
        return input_ids, labels

    def _tokenize_prompt_completion(self, record: Record) -> Example:
        prompt = self.tokenizer.encode(record["prompt"]).ids
        completion = self._with_eos(self._encode(record["completion"]))
        return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion

    def _tokenize_text(self, record: Record) -> Example:
        # Ending in EOS, so the model learns where documents stop.
        input_ids = self._with_eos(self.tokenizer.encode(record["text"]).ids)
        return input_ids, list(input_ids)

    def _assistant_turn_span(
        self, messages: list[Record], tools: list[Any] | None, index: int, input_ids: list[int]
    ) -> tuple[int, int]:
        """Token span of assistant turn `index` in the full rendering: the tokens its own rendering adds.

        With a template that renders every prefix of a conversation as a prefix of the whole (ChatML,
        Llama 3, Mistral...), the span is exact. Otherwise only the tokens that both renderings agree
        on are labelled, as transformers' encode_message_with_chat_template does: never a prompt token.
        """
        before = self.encode_chat(messages[:index], tools, add_generation_prompt=True)
        through = self.encode_chat(messages[: index + 1], tools)
        start, end = _shared_prefix_length(input_ids, before), _shared_prefix_length(input_ids, through)
        if (start < len(before) or end < len(through)) and not self._warned_inexact_spans:
            self._warned_inexact_spans = True
            logger.warning("the chat template renders turns differently in context: inexact assistant spans")
        return start, end

    def _with_eos(self, input_ids: list[int]) -> list[int]:
        eos = self.eos_token_id
        return [*input_ids, eos] if eos is not None and input_ids[-1:] != [eos] else input_ids

    # --- encoding text with control tokens typed in it ---------------------------------------------------

    def _control_tokens_in(self, template: str) -> re.Pattern[str]:
        """The added tokens that mark structure: the special ones, plus those in the template's strings.

        A config's chat_control_tokens lists the non-special ones instead, for templates that build
        them from pieces. Whitespace tokens are text in any template.
        """
        pattern = self._control_tokens.get(template)
        if pattern is None:
            listed = self._listed_control_tokens
            literals = template_literals(template)

            def is_control(content: str, special: bool) -> bool:
                if special:
                    return True
                if listed is not None:
                    return content in listed
                return content in literals and not content.isspace()

            tokens = [content for content, special in self._added_tokens if is_control(content, special)]
            pattern = self._control_tokens[template] = re.compile(_alternatives(tokens) or "(?!)")
        return pattern

    def _encode_marked(self, text: str) -> list[int]:
        """Encode a rendered chat: marked control tokens as plain text, the template's own as tokens.

        Splitting on the markers gives [text, marked token, text, ...], None for a lone marker (a
        template's string methods can split a pair): dropped, but it still ends the text before it.
        """
        pieces = self._markers.split(text)
        input_ids = self._encode(pieces[0])
        for index, piece in enumerate(pieces[1:], start=1):
            if not piece:
                continue
            as_text = index % 2 == 1
            piece_ids = self._encode_piece(piece, as_text=as_text)
            if as_text and self.tokenizer.token_to_id(piece) in piece_ids:
                raise ChatTemplateError(
                    f"cannot encode {piece!r} as text: this tokenizer makes it from plain text"
                )
            input_ids += piece_ids
        return input_ids

    def _encode_piece(self, piece: str, *, as_text: bool) -> list[int]:
        """Encode text from the middle of a chat, as it would be there.

        After a newline, which is then taken off again: a SentencePiece tokenizer would otherwise
        encode the piece as the start of a text, with the space it prefixes to one.
        """
        encode = self._encode_as_text if as_text else self._encode
        piece_ids = encode("\n" + piece)
        newline = self._newline_ids
        if piece_ids[: len(newline)] == newline:
            return piece_ids[len(newline) :]
        return encode(piece)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _encode_as_text(self, text: str) -> list[int]:
        """Encode with no added token matched, special or not: the tokenizer's pipeline without them."""
        tokenizer = self.tokenizer
        if tokenizer.normalizer is not None:
            text = tokenizer.normalizer.normalize_str(text)
        splits = [text]
        if tokenizer.pre_tokenizer is not None:
            splits = [split for split, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]
        return [token.id for split in splits for token in tokenizer.model.tokenize(split)]


def _unweighted(messages: list[Record]) -> list[Record]:
    """Messages as a chat template sees them: without loraq's loss weights."""
    return [{key: value for key, value in message.items() if key != "weight"} for message in messages]


def _named_special_tokens(config: dict[str, Any]) -> dict[str, str]:
    """The special tokens a template sees by name: the config's "*_token" keys, as in transformers."""
    named = config.get("extra_special_tokens")
    candidates = dict(named) if isinstance(named, dict) else {}
    candidates |= {key: value for key, value in config.items() if key.endswith("_token")}
    tokens = {name: _token_text(value) for name, value in candidates.items()}
    return {name: token for name, token in tokens.items() if token is not None}


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with its content."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _add_special_tokens(tokenizer: Tokenizer, tokens: Iterable[str]) -> None:
    present = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    missing = [token for token in dict.fromkeys(tokens) if token not in present]
    if missing:
        tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in missing])


def _marked(value: Any, control_tokens: re.Pattern[str]) -> Any:
    """The strings in value (recursively; not dict keys) with their control tokens between markers."""
    if isinstance(value, str):
        # Markers already in the text are dropped first, so that none can forge a marked token.
        value = value.replace(_MARK_START, "").replace(_MARK_END, "")
        return control_tokens.sub(lambda match: _MARK_START + match.group() + _MARK_END, value)
    if isinstance(value, dict):
        return {key: _marked(item, control_tokens) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_marked(item, control_tokens) for item in value]
    return value


def _alternatives(tokens: Iterable[str]) -> str:
    """A regex alternation of tokens, longest first, so a token wins over the tokens inside it."""
    return "|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True))


def _shared_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def tokenizer_of(model_dir: Path) -> ExampleTokenizer:
    """A base model's ExampleTokenizer, loaded once per process while its tokenizer files stay the same.

    For the API, which asks for it on every create and estimate.
    """
    files = sorted([*model_dir.glob("*.json"), *model_dir.glob("*.jinja")])
    return _loaded_tokenizer(model_dir.resolve(), tuple((p.name, p.stat().st_mtime_ns) for p in files))


@lru_cache(maxsize=16)
def _loaded_tokenizer(model_dir: Path, _files: tuple[tuple[str, int], ...]) -> ExampleTokenizer:
    return ExampleTokenizer.from_model_dir(model_dir)
