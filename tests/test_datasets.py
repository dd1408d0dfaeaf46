"""Tests for loraq.files.validation: the three formats, the malformed corpus, chunking and limits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from loraq.files.validation import (
    DatasetError,
    DatasetLimits,
    DatasetSummary,
    DatasetValidator,
    detect_format,
    iter_examples,
)
from tests.helpers import validate

MALFORMED = Path(__file__).parent / "data" / "malformed"
EXPECTED: dict[str, dict[str, Any]] = json.loads((MALFORMED / "EXPECTED.json").read_text())

Example = dict[str, Any]

CHAT: list[Example] = [
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    # weights, names, tool calls and an empty tool answer are all allowed
    {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?", "name": "ann"},
            {
                "role": "assistant",
                "content": "",
                "weight": 0,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "content": "", "tool_call_id": "c1"},
            {"role": "assistant", "content": "Rainy, as ever. Ça va ☔", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
    },
]
PROMPT_COMPLETION: list[Example] = [
    {"prompt": "", "completion": "Once upon a time"},
    {"prompt": "2+2=", "completion": "4"},
]
TEXT: list[Example] = [{"text": "plain text"}, {"text": "日本語も大丈夫"}, {"text": "line\u2028separator"}]


def write_with_blank_line(path: Path, examples: list[Example], *, end: str = "\n") -> bytes:
    """Write examples one a line, with a blank line in the middle; return the bytes written."""
    lines = [json.dumps(example, ensure_ascii=False) for example in examples]
    data = "\n".join([lines[0], "", *lines[1:]]).encode() + end.encode()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize(
    ("format_name", "examples"),
    [
        ("chat", CHAT),
        ("prompt_completion", PROMPT_COMPLETION),
        ("text", TEXT),
    ],
)
@pytest.mark.parametrize("end", ["\n", "", "\n\n"])
def test_valid_files_pass_and_are_summarized(
    tmp_path: Path, format_name: str, examples: list[Example], end: str
) -> None:
    path = tmp_path / "train.jsonl"
    data = write_with_blank_line(path, examples, end=end)

    summary = validate(path.read_bytes())

    assert summary == DatasetSummary(format_name, len(examples), len(data), hashlib.sha256(data).hexdigest())
    assert list(iter_examples(path)) == examples


def test_crlf_line_endings_are_accepted() -> None:
    data = b'{"text": "a"}\r\n\r\n{"text": "b"}\r\n'
    assert validate(data).examples == 2


def test_detect_format() -> None:
    assert detect_format(CHAT[0]) == "chat"
    assert detect_format({"prompt": "a", "completion": "b"}) == "prompt_completion"
    assert detect_format({"completion": "b"}) == "prompt_completion"
    assert detect_format({"text": "a"}) == "text"
    with pytest.raises(DatasetError, match="unknown key input"):
        detect_format({"input": "a"})


def test_malformed_corpus_has_an_expectation_per_file() -> None:
    assert len(EXPECTED) >= 25
    assert sorted(EXPECTED) == sorted(path.name for path in MALFORMED.glob("*.jsonl"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_is_rejected_with_its_line_and_rule(name: str) -> None:
    expected = EXPECTED[name]

    with pytest.raises(DatasetError) as caught:
        validate((MALFORMED / name).read_bytes())

    err = caught.value
    assert err.line == expected["line"]
    assert str(expected["contains"]) in err.message
    assert str(err) == (err.message if err.line is None else f"line {err.line}: {err.message}")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_fed_byte_by_byte_fails_the_same_way(name: str) -> None:
    with pytest.raises(DatasetError) as whole:
        validate((MALFORMED / name).read_bytes())
    with pytest.raises(DatasetError) as bytewise:
        validate((MALFORMED / name).read_bytes(), chunk_size=1)
    assert str(bytewise.value) == str(whole.value)


def test_error_names_the_field_path() -> None:
    with pytest.raises(DatasetError) as caught:
        validate((MALFORMED / "unknown_role.jsonl").read_bytes())
    assert caught.value.param == "messages[1].role"
    assert str(caught.value) == "line 1: messages[1].role must be one of system, user, assistant, tool"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 1 << 16])
def test_chunking_does_not_change_the_summary(tmp_path: Path, chunk_size: int) -> None:
    data = write_with_blank_line(tmp_path / "train.jsonl", CHAT * 3, end="")

    assert validate(data, chunk_size=chunk_size) == validate(data)


def test_multibyte_character_split_across_chunks() -> None:
    data = '{"text": "€"}\n'.encode()
    euro = data.index("€".encode())
    validator = DatasetValidator()
    validator.feed(data[: euro + 1])  # the chunk ends after the first of the euro sign's three bytes
    validator.feed(data[euro + 1 :])
    assert validator.finish().examples == 1


def test_line_longer_than_the_limit_fails_before_its_end_arrives() -> None:
    validator = DatasetValidator(DatasetLimits(max_line_bytes=20))
    validator.feed(b'{"text": "short"}\n')
    validator.feed(b'{"text": "' + b"x" * 5)
    with pytest.raises(DatasetError) as caught:
        validator.feed(b"x" * 10)  # no newline yet: the validator must not wait for one
    assert str(caught.value) == "line 2: longer than 20 bytes"
    assert caught.value.param == "max_line_bytes"


def test_line_at_the_limit_passes_and_one_byte_more_fails() -> None:
    line = b'{"text": "abc"}'
    assert validate(line + b"\n", chunk_size=1, limits=DatasetLimits(max_line_bytes=len(line))).examples == 1
    with pytest.raises(DatasetError, match=f"line 1: longer than {len(line) - 1} bytes"):
        validate(line + b"\n", limits=DatasetLimits(max_line_bytes=len(line) - 1))


def test_max_bytes_is_enforced() -> None:
    data = b'{"text": "a"}\n' * 10
    assert validate(data, chunk_size=16, limits=DatasetLimits(max_bytes=len(data))).bytes == len(data)
    with pytest.raises(DatasetError) as caught:
        validate(data, chunk_size=16, limits=DatasetLimits(max_bytes=len(data) - 1))
    assert str(caught.value) == f"file is larger than {len(data) - 1} bytes"
    assert caught.value.line is None and caught.value.param == "max_bytes"


def test_max_examples_is_enforced() -> None:
    data = b'{"text": "a"}\n\n' * 3
    assert validate(data, limits=DatasetLimits(max_examples=3)).examples == 3
    with pytest.raises(DatasetError, match="line 5: more than 2 examples"):
        validate(data, limits=DatasetLimits(max_examples=2))


def test_deeply_nested_json_is_an_error_not_a_crash() -> None:
    data = b'{"text": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n"
    with pytest.raises(DatasetError, match="line 1: not valid JSON"):
        validate(data)


def test_validator_stays_failed_after_an_error() -> None:
    validator = DatasetValidator()
    with pytest.raises(DatasetError, match="line 1"):
        validator.feed(b"[]\n")
    with pytest.raises(DatasetError, match="line 1"):
        validator.feed(b'{"text": "fine"}\n')
    with pytest.raises(DatasetError, match="line 1"):
        validator.finish()


def test_finish_twice_is_a_programming_error() -> None:
    validator = DatasetValidator()
    validator.feed(b'{"text": "a"}')
    validator.finish()
    with pytest.raises(RuntimeError):
        validator.finish()
