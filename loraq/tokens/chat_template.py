"""Chat templates as transformers runs them, without transformers: finding, compiling and rendering them."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

# The chat template loraq trains with when a base model has none: one copy for worker and estimate.
# ChatML, with tool calls written out as JSON (Qwen's way) so that they are trained on too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% for call in message.tool_calls or [] %}"
    "{{ '\n<tool_call>\n' + call | tojson + '\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The base model's chat template cannot render an example: bad data for it, or a broken template."""


def chat_templates(model_dir: Path, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """The base's chat templates by name, as transformers loads them; "default" is always there.

    tokenizer_config.json's "chat_template" (one string, or [{"name", "template"}, ...]), then
    chat_template.jinja as the default and additional_chat_templates/NAME.jinja; else loraq's ChatML.
    """
    configured = tokenizer_config.get("chat_template")
    templates: dict[str, str] = {}
    if isinstance(configured, str):
        templates["default"] = configured
    elif isinstance(configured, list):
        for entry in configured:
            if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                templates[str(entry.get("name"))] = entry["template"]
    path = model_dir / "chat_template.jinja"
    if path.is_file():
        templates["default"] = path.read_text(encoding="utf-8")
    extra = model_dir / "additional_chat_templates"
    if extra.is_dir():
        templates |= {file.stem: file.read_text(encoding="utf-8") for file in sorted(extra.glob("*.jinja"))}
    if not templates.get("default"):
        templates["default"] = CHATML_TEMPLATE
    return templates


def chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str:
    """The base's default chat template, else loraq's ChatML."""
    return chat_templates(model_dir, tokenizer_config)["default"]


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
    variables: dict[str, str],
) -> str:
    """Render a conversation; whatever goes wrong in the (untrusted) template is a ChatTemplateError."""
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=messages,
            tools=tools,
            documents=None,  # transformers always passes it, so "documents is defined" holds there too
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    # Templates are code from a model's author: any exception means this example cannot be rendered.
    except Exception as error:
        raise ChatTemplateError(f"the chat template cannot render this example: {error}") from error


@lru_cache(maxsize=32)
def template_literals(template: str) -> str:
    """The template's literal text and string constants, NUL-separated so no match spans two of them."""
    tree = _compile(template).environment.parse(template)
    literals = {node.data for node in tree.find_all(nodes.TemplateData)}
    literals |= {node.value for node in tree.find_all(nodes.Const) if isinstance(node.value, str)}
    return "\0".join(sorted(literals))


class _GenerationTag(Extension):
    """{% generation %}...{% endgeneration %}: transformers marks assistant text with it; render the body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Namespace(Namespace):
    """jinja2's namespace() without underscore attributes, which could reach Python's internals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        attributes = dict(*args, **kwargs)
        for name in attributes:
            _check_attribute(name)
        super().__init__(attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_attribute(name)
        super().__setitem__(name, value)


def _check_attribute(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Like transformers' tojson: keeps non-ASCII text and HTML characters as they are, unlike jinja2's.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    """Compile as transformers does: sandboxed, the same whitespace rules, tags, filters and globals."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    environment.globals["namespace"] = _Namespace
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(f"the base model's chat template does not compile: {error}") from error
