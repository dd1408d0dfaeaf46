"""Every malformed file of the corpus is refused at upload with a 400 naming its line and rule;
none is stored. Every valid format uploads and records its format and size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stack import Stack

MALFORMED = Path(__file__).parent / "data" / "malformed"
EXPECTED = json.loads((MALFORMED / "EXPECTED.json").read_text())


def _upload_traces(home: Path) -> set[Path]:
    """What an upload can leave behind: dataset blobs and upload scratch files. Checkpoint blobs are left
    out: jobs of earlier tests on this shared stack may still be pruning theirs."""
    return set((home / "artifacts" / "datasets").glob("*")) | set((home / "scratch").glob("upload@*"))


def test_every_malformed_file_is_refused_and_nothing_is_stored(stack: Stack) -> None:
    with stack.client() as client:
        files_before = client.get("/v1/files").json()["data"]
        traces_before = _upload_traces(stack.home)
        for name, expected in sorted(EXPECTED.items()):
            response = client.post(
                "/v1/files",
                files={"file": (name, (MALFORMED / name).read_bytes())},
                data={"purpose": "fine-tune"},
            )
            assert response.status_code == 400, (name, response.text)
            error = response.json()["error"]
            assert error["param"] == "file" and error["code"] == "invalid_file", (name, error)
            prefix = f"line {expected['line']}: " if expected["line"] is not None else ""
            assert error["message"].startswith(prefix), (name, error["message"])
            assert expected["contains"] in error["message"], (name, error["message"])
        assert client.get("/v1/files").json()["data"] == files_before
    assert _upload_traces(stack.home) == traces_before


@pytest.mark.parametrize(
    ("lines", "fmt"),
    [
        (
            [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
            "chat",
        ),
        ([{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}], "prompt_completion"),
        ([{"text": "plain text to learn from"}], "text"),
    ],
)
def test_each_format_is_detected_and_recorded(stack: Stack, lines: list[dict[str, object]], fmt: str) -> None:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with stack.client() as client:
        response = client.post(
            "/v1/files", files={"file": ("data.jsonl", content)}, data={"purpose": "fine-tune"}
        )
        assert response.status_code == 200, response.text
        uploaded = response.json()
        assert (uploaded["format"], uploaded["examples"], uploaded["bytes"]) == (
            fmt,
            len(lines),
            len(content),
        )
        assert client.get(f"/v1/files/{uploaded['id']}/content").content == content
        assert client.delete(f"/v1/files/{uploaded['id']}").json() == {
            "id": uploaded["id"],
            "object": "file",
            "deleted": True,
        }
        assert client.get(f"/v1/files/{uploaded['id']}").status_code == 404
