"""Training-data formats and streaming validation of JSONL uploads (standard library only).

A file holds one JSON object a line, all in one format: chat (`{"messages": [...]}`),
prompt/completion (`{"prompt", "completion"}`) or plain text (`{"text"}`). Blank lines are skipped.
Lines are split on b"\\n" only, so a JSON string may hold U+2028 and friends; a UTF-8 byte order mark
is rejected so that every reader downstream sees plain UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = frozenset({"role", "content", "weight", "name", "tool_call_id", "tool_calls"})
CHUNK_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class DatasetError(ValueError):
    """A rule the file breaks, with its 1-based line number (None for file-level errors)."""

    def __init__(self, message: str, *, line: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        # The field path ("messages[2].role") or limit ("max_bytes") the error is about, if any.
        self.param = param

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"

    def at_line(self, line: int) -> DatasetError:
        """The same error, located at a line."""
        return DatasetError(self.message, line=line, param=self.param)


@dataclass(frozen=True)
class DatasetLimits:
    """How much one upload may hold; the API sets these from settings."""

    max_line_bytes: int = 1_000_000
    max_examples: int = 1_000_000
    max_bytes: int = 1 << 30


@dataclass(frozen=True)
class DatasetSummary:
    """What validation learned about a good file."""

    format: str  # "chat" | "prompt_completion" | "text"
    examples: int
    bytes: int
    sha256: str  # hex digest of the file's bytes, as stored


# --- the rules of one example ------------------------------------------------------------------------


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, with its article ("an array", "null")."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _field(obj: dict[str, Any], key: str, kind: type, prefix: str = "") -> Any:
    """obj[key], which must be present and of the given JSON type."""
    path = prefix + key
    if key not in obj:
        raise DatasetError(f"{path} is required", param=path)
    return _expect(obj[key], kind, path)


def _expect(value: Any, kind: type, path: str) -> Any:
    """value itself, if it has the given JSON type."""
    if not isinstance(value, kind):
        raise DatasetError(f"{path} must be {_JSON_TYPES[kind]}, not {_json_type(value)}", param=path)
    return value


def _text(obj: dict[str, Any], key: str, prefix: str = "", *, allow_empty: bool = False) -> str:
    """obj[key] as a string the tokenizer can take, non-blank unless allow_empty."""
    path = prefix + key
    value: str = _field(obj, key, str, prefix)
    if not allow_empty and not value.strip():
        raise DatasetError(f"{path} must not be empty", param=path)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON lets "\ud800" through; the tokenizer would fail on it hours later, in the worker.
        raise DatasetError(f"{path} contains an unpaired surrogate (\\ud800-\\udfff)", param=path) from None
    return value


def _reject_unknown_keys(obj: dict[str, Any], allowed: frozenset[str], prefix: str, what: str) -> None:
    """Refuse keys outside allowed: a typo ("contnet") would otherwise be silently ignored."""
    for key in obj:
        if key not in allowed:
            raise DatasetError(
                f"unknown key {prefix}{key} ({what} may have {', '.join(sorted(allowed))})",
                param=prefix + key,
            )


def _check_message(message: Any, path: str) -> None:
    """The rules of one chat message."""
    _expect(message, dict, path)
    prefix = path + "."
    _reject_unknown_keys(message, MESSAGE_KEYS, prefix, "a message")
    role = _field(message, "role", str, prefix)
    if role not in ROLES:
        raise DatasetError(f"{prefix}role must be one of {', '.join(ROLES)}", param=prefix + "role")
    for key in ("tool_calls", "weight"):
        if key in message and role != "assistant":
            raise DatasetError(f"{prefix}{key} is only allowed on assistant messages", param=prefix + key)
    has_tool_calls = bool("tool_calls" in message and _field(message, "tool_calls", list, prefix))
    for index, call in enumerate(message.get("tool_calls") or []):
        _expect(call, dict, f"{prefix}tool_calls[{index}]")
    # A tool may answer with nothing, and an assistant that calls tools need not say anything.
    _text(message, "content", prefix, allow_empty=role == "tool" or has_tool_calls)
    # bool is an int in Python, so compare types: `true` is not a weight.
    if "weight" in message and not (type(message["weight"]) is int and message["weight"] in (0, 1)):
        raise DatasetError(f"{prefix}weight must be 0 or 1", param=prefix + "weight")
    for key in ("name", "tool_call_id"):
        if key in message:
            _expect(message[key], str, prefix + key)


def _check_chat(example: dict[str, Any]) -> None:
    """The rules of a chat example: messages to train on, and at least one answer to learn."""
    messages = _field(example, "messages", list)
    if not messages:
        raise DatasetError("messages must not be empty", param="messages")
    if "tools" in example:
        # Chat templates read each tool as an object ({"type": "function", "function": {...}}); anything
        # else would fail in the worker's template, long after this upload said yes.
        for index, tool in enumerate(_expect(example["tools"], list, "tools")):
            _expect(tool, dict, f"tools[{index}]")
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]")
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        raise DatasetError("needs an assistant message with weight 1 (something to learn)", param="messages")


def _check_prompt_completion(example: dict[str, Any]) -> None:
    """The rules of a prompt/completion example: the prompt may be empty, the completion may not."""
    _text(example, "prompt", allow_empty=True)
    _text(example, "completion")


def _check_text(example: dict[str, Any]) -> None:
    """The rules of a plain-text example."""
    _text(example, "text")


# Each format's top-level keys (any one of them marks an example as that format) and its rules.
# Order matters for detection: {"messages", "text"} is a chat example with an unknown key.
_FORMATS: dict[str, tuple[frozenset[str], Callable[[dict[str, Any]], None]]] = {
    "chat": (frozenset({"messages", "tools"}), _check_chat),
    "prompt_completion": (frozenset({"prompt", "completion"}), _check_prompt_completion),
    "text": (frozenset({"text"}), _check_text),
}
_FORMAT_HINT = "an example has messages (chat), prompt and completion, or text"


def detect_format(example: dict[str, Any]) -> str:
    """Which format one parsed line is; raises DatasetError (without a line) if none."""
    for name, (keys, _) in _FORMATS.items():
        if not keys.isdisjoint(example):
            return name
    if not example:
        raise DatasetError(f"empty object; {_FORMAT_HINT}")
    key = next(iter(example))
    raise DatasetError(f"unknown key {key}; {_FORMAT_HINT}", param=key)


def check_example(example: dict[str, Any], format_name: str) -> None:
    """Apply a format's rules to one parsed line; raises DatasetError (without a line)."""
    keys, check = _FORMATS[format_name]
    _reject_unknown_keys(example, keys, "", f"a {format_name} example")
    check(example)


# --- streaming a file through the rules ----------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN and Infinity, which Python's json accepts but JSON does not."""
    raise ValueError(f"{name} is not allowed")


def _parse_line(raw: bytes) -> Any:
    """One line's bytes as a JSON value; raises DatasetError (without a line)."""
    if raw.startswith(_BOM):
        raise DatasetError("starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"not valid UTF-8 (byte {raw[err.start]:#04x} at byte {err.start + 1})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        # Some messages end in "at" already ("Unterminated string starting at"): don't say it twice.
        reason = f"{err.msg.removesuffix(' at')} at column {err.colno}"
    except ValueError as err:  # NaN, or an integer longer than Python will parse
        reason = str(err)
    except RecursionError:
        reason = "nested too deeply"
    raise DatasetError(f"not valid JSON ({reason})")


class DatasetValidator:
    """Validates a JSONL upload fed in chunks, holding at most one line in memory.

    feed() raises DatasetError at the first bad line; once it has raised, the validator stays failed.
    """

    def __init__(self, limits: DatasetLimits = DatasetLimits()) -> None:
        self._limits = limits
        self._sha256 = hashlib.sha256()
        self._bytes = 0
        self._lines = 0  # lines completed so far; the line being read is self._lines + 1
        self._pending = bytearray()  # the start of a line whose newline has not arrived yet
        self._format: str | None = None
        self._examples = 0
        self._error: DatasetError | None = None
        self._finished = False

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the file, checking every line they complete."""
        self._ensure_usable()
        try:
            if self._bytes + len(chunk) > self._limits.max_bytes:
                raise DatasetError(f"file is larger than {self._limits.max_bytes} bytes", param="max_bytes")
            self._bytes += len(chunk)
            self._sha256.update(chunk)
            *complete, rest = chunk.split(b"\n")
            for piece in complete:
                self._pending += piece
                self._end_line()
            self._pending += rest
            # Fail as soon as the unfinished line is too long, rather than buffer it to its end.
            self._check_line_length(self._lines + 1)
        except DatasetError as err:
            self._error = err
            raise

    def finish(self) -> DatasetSummary:
        """Check the last line (which may lack a newline) and summarize the file."""
        self._ensure_usable()
        try:
            if self._pending:
                self._end_line()
            if self._format is None:
                raise DatasetError("file has no examples")
        except DatasetError as err:
            self._error = err
            raise
        self._finished = True
        return DatasetSummary(self._format, self._examples, self._bytes, self._sha256.hexdigest())

    def _ensure_usable(self) -> None:
        """Refuse work after an error or after finish(), where results would mean nothing."""
        if self._error is not None:
            raise self._error
        if self._finished:
            raise RuntimeError("DatasetValidator.finish() was already called")

    def _check_line_length(self, line: int) -> None:
        """Raise if the pending line is longer than the limit."""
        if len(self._pending) > self._limits.max_line_bytes:
            raise DatasetError(
                f"longer than {self._limits.max_line_bytes} bytes", line=line, param="max_line_bytes"
            )

    def _end_line(self) -> None:
        """Check the pending line, now complete, and start the next."""
        self._lines += 1
        self._check_line_length(self._lines)
        raw = bytes(self._pending)
        self._pending.clear()
        if raw.strip():
            try:
                self._check_line(raw)
            except DatasetError as err:
                raise err.at_line(self._lines) from None

    def _check_line(self, raw: bytes) -> None:
        """The rules of one non-blank line; raises DatasetError (without a line)."""
        example = _parse_line(raw)
        if not isinstance(example, dict):
            raise DatasetError(f"must be a JSON object, not {_json_type(example)}")
        line_format = detect_format(example)
        if self._format is None:
            self._format = line_format
        elif line_format != self._format:
            raise DatasetError(f"mixes formats: this line is {line_format}, the file is {self._format}")
        check_example(example, line_format)
        if self._examples == self._limits.max_examples:
            raise DatasetError(f"more than {self._limits.max_examples} examples", param="max_examples")
        self._examples += 1


def iter_examples(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the parsed examples of an already validated file, skipping blank lines."""
    with open(path, "rb") as file:
        yield from _parsed(file)  # binary files split on b"\n" only, as the validator does


def examples_of_chunks(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The parsed examples of an already validated file read in chunks (from the store), as they come."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from _parsed(lines)
    yield from _parsed([rest])


def _parsed(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for raw in lines:
        if raw.strip():
            yield json.loads(raw)
