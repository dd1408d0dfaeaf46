"""Hardening at the edge: no body is read before its key is checked, and an upload streams through the
validator; NUL and control characters answer alike on both deployments; types are strict; every error
names its field."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import response_for
from loraq.core.db import make_engine
from loraq.files import repository as files_repository
from tests.helpers import chat_dataset, job_body, method, peak_rss_growth, upload
from tests.stack import Stack

MIB = 1 << 20
BIG_BODY_MIB = 300
BOUNDARY = "loraqHardeningBoundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def assert_error(response: httpx.Response, status: int, *, param: str | None, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert mentions in error["message"], error


def form_part(name: str, content: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


# --- 1. no unauthenticated body is read; an upload streams through the validator ---


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 response with a Content-Length: its status and JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


def post_while_watching(
    stack: Stack, path: str, *, head: bytes, filler_mib: int, tail: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any], int]:
    """POST head + filler_mib MiB + tail over a raw socket, looking for an answer after every MiB.

    Returns the status, the JSON body, and how many body bytes had gone out when the answer came: a
    server that answers before reading the body is seen answering while the client is still sending.
    The filler is one MiB sent again and again, so the test never holds the body either.
    """
    filler = b"x" * MIB
    length = len(head) + filler_mib * MIB + len(tail)
    request = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    request += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", stack.port), timeout=120) as sock:
        sock.sendall(request.encode() + head)
        sent = len(head)
        for piece in [filler] * filler_mib + [tail]:
            if select.select([sock], [], [], 0)[0]:
                break  # answered: stop sending
            try:
                sock.sendall(piece)
            except OSError:
                break  # the server closed on us: it had stopped reading, and its answer waits to be read
            sent += len(piece)
        status, body = read_response(sock)
    return status, body, sent


UPLOAD_HEAD = (
    form_part("purpose", b"fine-tune")
    + (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n').encode()
)
UPLOAD_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/projects", "/v1/files"])
@pytest.mark.parametrize("authorization", [None, "Bearer lq-wrong"])
def test_an_unauthenticated_body_is_never_read(stack: Stack, path: str, authorization: str | None) -> None:
    assert stack.api is not None
    headers = {"Content-Type": MULTIPART} | ({"Authorization": authorization} if authorization else {})
    with peak_rss_growth(stack.api.pid) as growth:
        status, body, sent = post_while_watching(
            stack, path, head=UPLOAD_HEAD, filler_mib=BIG_BODY_MIB, tail=UPLOAD_TAIL, headers=headers
        )
    assert status == 401, body
    assert body["error"]["code"] == "invalid_api_key"
    # The 401 came while most of the body was still to be sent, and the API held none of it.
    assert sent < BIG_BODY_MIB * MIB // 4, f"the 401 came after {sent >> 20} MiB of {BIG_BODY_MIB}"
    assert growth[0] < 50 * MIB, f"API memory grew by {growth[0] >> 20} MiB"
    assert httpx.get(stack.base_url + "/healthz").status_code == 200


def test_an_upload_is_validated_as_it_arrives(stack: Stack) -> None:
    """A dataset whose first line is bad is refused while the rest is still on its way."""
    assert stack.api is not None
    headers = {"Content-Type": MULTIPART, "Authorization": f"Bearer {stack.admin_key}"}
    with stack.client() as client:
        files_before = client.get("/v1/files").json()["data"]
        with peak_rss_growth(stack.api.pid) as growth:
            status, body, sent = post_while_watching(
                stack,
                "/v1/files",
                head=UPLOAD_HEAD + b"this is not json\n",
                filler_mib=200,
                tail=UPLOAD_TAIL,
                headers=headers,
            )
        assert (status, body["error"]["param"], body["error"]["code"]) == (400, "file", "invalid_file"), body
        assert body["error"]["message"].startswith("line 1: not valid JSON"), body
        assert sent < 50 * MIB, f"the 400 came after {sent >> 20} MiB of 200"
        assert growth[0] < 50 * MIB, f"API memory grew by {growth[0] >> 20} MiB"
        assert client.get("/v1/files").json()["data"] == files_before


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate", "/v1/projects"])
def test_a_json_route_gets_the_json_limit_whatever_the_content_type(stack: Stack, path: str) -> None:
    with stack.client() as client:
        response = client.post(path, content=b"x" * (2 * MIB), headers={"Content-Type": MULTIPART})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def post_form(stack: Stack, body: bytes) -> httpx.Response:
    with stack.client() as client:
        return client.post("/v1/files", content=body, headers={"Content-Type": MULTIPART})


def test_purpose_may_come_after_the_file(stack: Stack) -> None:
    content = chat_dataset(2)
    response = post_form(
        stack, form(form_part("file", content, "after.jsonl"), form_part("purpose", b"fine-tune"))
    )
    assert response.status_code == 200, response.text
    assert (response.json()["filename"], response.json()["bytes"]) == ("after.jsonl", len(content))


@pytest.mark.parametrize(
    ("parts", "param", "mentions"),
    [
        ([form_part("purpose", b"fine-tune")], "file", "file: required"),
        ([form_part("file", chat_dataset(2), "t.jsonl")], "purpose", "purpose: required"),
        ([form_part("purpose", b"fine-tune"), form_part("file", chat_dataset(2))], "file", "must be a file"),
        (
            [form_part("file", chat_dataset(2), "t.jsonl"), form_part("purpose", b"batch")],
            "purpose",
            "fine-tune",
        ),
        (
            [
                form_part("purpose", b"fine-tune"),
                form_part("file", chat_dataset(2), "t.jsonl"),
                form_part("x", b"1"),
            ],
            "x",
            "unknown form field 'x'",
        ),
    ],
)
def test_a_form_mistake_names_its_field(stack: Stack, parts: list[bytes], param: str, mentions: str) -> None:
    assert_error(post_form(stack, form(*parts)), 400, param=param, mentions=mentions)


def test_the_upload_route_is_documented_as_a_form() -> None:
    from api.app import create_app

    body = create_app().openapi()["paths"]["/v1/files"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert body["required"] and set(schema["required"]) == {"file", "purpose"}


# --- 2. NUL and control characters: the same 400 on both deployments ---


@pytest.fixture
def project_id(stack: Stack) -> str:
    with stack.client() as client:
        return str(client.get("/v1/projects").json()["data"][0]["id"])


def test_nul_in_ids_and_filters_is_the_same_400_everywhere(stack: Stack, project_id: str) -> None:
    with stack.client() as client:
        for path, params, param in [
            ("/v1/files/%00", {}, "file_id"),
            ("/v1/files/file-a%00b/content", {}, "file_id"),
            ("/v1/files", {"purpose": "\x00"}, "purpose"),
            ("/v1/files", {"after": "file-\x00"}, "after"),
            ("/v1/fine_tuning/jobs/ftjob-%00", {}, "fine_tuning_job_id"),
            ("/v1/fine_tuning/jobs/ftjob-%00/events", {}, "fine_tuning_job_id"),
            ("/v1/fine_tuning/jobs", {"after": "\x00"}, "after"),
            ("/v1/fine_tuning/jobs", {"status": "queued\x00"}, "status"),
            ("/v1/fine_tuning/jobs", {"metadata": '{"team": "a\\u0000"}'}, "metadata"),
            ("/v1/fine_tuning/jobs", {"metadata": '{"a\\u0000": "b"}'}, "metadata"),
            (f"/v1/projects/{project_id}%00", {}, "project_id"),
        ]:
            assert_error(client.get(path, params=params), 400, param=param)
        assert_error(client.delete(f"/v1/projects/{project_id}/api_keys/key_%00"), 400, param="key_id")
        assert_error(client.delete("/v1/files/file-%00"), 400, param="file_id")
        assert_error(client.post("/v1/fine_tuning/jobs/%00/cancel"), 400, param="fine_tuning_job_id")


@pytest.mark.parametrize(
    ("change", "param", "mentions"),
    [
        ({"training_file": "file-\x00"}, "training_file", "pattern"),
        ({"validation_file": "file-\x00"}, "validation_file", "pattern"),
        ({"model": "loraq-tiny-demo\x00"}, "model", "NUL"),
        ({"metadata": {"team": "a\x00b"}}, "metadata.team", "NUL"),
        ({"metadata": {"te\x00am": "a"}}, "metadata.te\x00am", "NUL"),
    ],
)
def test_nul_in_a_job_body_is_a_400_naming_the_field(
    stack: Stack, change: dict[str, Any], param: str, mentions: str
) -> None:
    body = job_body("file-abc") | change
    with stack.client() as client:
        assert_error(client.post("/v1/fine_tuning/jobs", json=body), 400, param=param, mentions=mentions)


def test_nul_in_a_project_name_or_a_filename_is_a_400(stack: Stack) -> None:
    with stack.client() as client:
        # NUL, and ":" or a newline, which would make ft:<base>:<project>:<suffix>:<job> ambiguous.
        for name in ("a\x00b", "team:x", "line\nbreak", "two words"):
            response = client.post("/v1/projects", json={"name": name})
            assert_error(response, 400, param="name", mentions="pattern")
        assert client.post("/v1/projects", json={"name": "search-team.v2"}).status_code == 200
    body = form(form_part("purpose", b"fine-tune"), form_part("file", chat_dataset(2), "t\x00.jsonl"))
    assert_error(post_form(stack, body), 400, param="file", mentions="NUL")


def test_a_value_postgres_refuses_is_a_400_not_an_outage(postgres_database: str) -> None:
    """The backstop behind the edge's checks: Postgres's DataError is the request's fault."""
    engine = make_engine(postgres_database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session, pytest.raises(SQLAlchemyError) as refused:
            files_repository.get_file(session, project_id="proj_x", file_id="file-\x00")
    finally:
        engine.dispose()
    response = response_for(refused.value)
    assert response is not None and response.status_code == 400


def test_a_pool_with_no_free_connection_is_a_503_to_retry(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'pool.db'}", pool_size=1, max_overflow=0, pool_timeout=0.05
    )
    with engine.connect(), pytest.raises(SQLAlchemyError) as exhausted:
        engine.connect()
    response = response_for(exhausted.value)
    assert response is not None and response.status_code == 503
    assert response.headers["retry-after"]


# --- 3. strict types ---

HP = "method.supervised.hyperparameters"


def hyperparameters(**values: Any) -> dict[str, Any]:
    return {"method": method(**values)}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (hyperparameters(n_epochs="3"), f"{HP}.n_epochs"),
        (hyperparameters(n_epochs=True), f"{HP}.n_epochs"),
        (hyperparameters(learning_rate="0.001"), f"{HP}.learning_rate"),
        (hyperparameters(packing="true"), f"{HP}.packing"),
        ({"hyperparameters": {"batch_size": "4"}}, "hyperparameters.batch_size"),
        ({"seed": "1"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"export": {"merged": "yes"}}, "export.merged"),
        ({"export": {"merged": 1}}, "export.merged"),
        ({"adapter": {"r": "8"}}, "adapter.r"),
        ({"adapter": {"quantization": {"bits": "4"}}}, "adapter.quantization.bits"),
        ({"metadata": {"team": 1}}, "metadata.team"),
    ],
)
def test_job_fields_are_not_coerced(stack: Stack, change: dict[str, Any], param: str) -> None:
    body = job_body("file-abc", **change)
    with stack.client() as client:
        assert_error(client.post("/v1/fine_tuning/jobs", json=body), 400, param=param)


def test_a_whole_number_is_still_a_float(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, chat_dataset(8))
        body = job_body(
            training["id"],
            method=method(learning_rate_multiplier=2, warmup_ratio=0, weight_decay=0, max_grad_norm=1),
            adapter={"alpha": 16},
        )
        response = client.post("/v1/fine_tuning/jobs/estimate", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "param"),
    [({"name": 5}, "name"), ({"name": "p", "max_running_jobs": "3"}, "max_running_jobs")],
)
def test_project_fields_are_not_coerced(stack: Stack, body: dict[str, Any], param: str) -> None:
    with stack.client() as client:
        assert_error(client.post("/v1/projects", json=body), 400, param=param)


# --- 4. every message names its field ---


@pytest.mark.parametrize(
    ("change", "param", "mentions"),
    [
        (hyperparameters(eval_steps=5), f"{HP}.eval_steps", "eval_steps needs"),
        ({"hyperparameters": {"eval_steps": 5}}, "hyperparameters.eval_steps", "eval_steps needs"),
        (hyperparameters(early_stopping_patience=2), f"{HP}.early_stopping_patience", "needs"),
        (
            {"validation_file": "file-v"} | hyperparameters(validation_split=0.1),
            f"{HP}.validation_split",
            "not both",
        ),
        (
            hyperparameters(validation_split=0.1, early_stopping_patience=2, eval_steps=3, save_steps=4),
            f"{HP}.save_steps",
            "multiple of eval_steps",
        ),
        ({"hyperparameters": {}} | hyperparameters(), "hyperparameters", "not both"),
        (
            {"adapter": {"type": "qlora", "use_dora": True, "quantization": {"bits": 8}}},
            "adapter.use_dora",
            "8-bit",
        ),
    ],
)
def test_a_broken_rule_names_the_field_to_change(
    stack: Stack, change: dict[str, Any], param: str, mentions: str
) -> None:
    body = job_body("file-abc", **change)
    with stack.client() as client:
        assert_error(client.post("/v1/fine_tuning/jobs", json=body), 400, param=param, mentions=mentions)


HUGE = "9" * 5000


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (f'{{"model": "m", "training_file": "file-a", "seed": {HUGE}}}', "seed"),
        (f'{{"model": "m", "training_file": "file-a", "seed": -{HUGE}}}', "seed"),
        (
            f'{{"model": "m", "training_file": "file-a", "hyperparameters": {{"n_epochs": {HUGE}}}}}',
            "hyperparameters.n_epochs",
        ),
    ],
)
def test_a_huge_integer_is_too_large_at_its_field(stack: Stack, raw: str, param: str) -> None:
    with stack.client() as client:
        response = client.post(
            "/v1/fine_tuning/jobs", content=raw, headers={"Content-Type": "application/json"}
        )
    assert_error(response, 400, param=param, mentions="integer too large")
    assert "set_int_max_str_digits" not in response.text


def test_a_huge_integer_in_a_project_or_a_filter_is_a_400(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post(
            "/v1/projects",
            content=f'{{"name": "p", "max_queued_jobs": {HUGE}}}',
            headers={"Content-Type": "application/json"},
        )
        assert_error(response, 400, param="max_queued_jobs", mentions="integer too large")
        response = client.get("/v1/fine_tuning/jobs", params={"metadata": f'{{"team": {HUGE}}}'})
        assert_error(response, 400, param="metadata", mentions="team")
        assert "set_int_max_str_digits" not in response.text


def test_an_unknown_status_filter_is_a_400(stack: Stack) -> None:
    with stack.client() as client:
        assert_error(client.get("/v1/fine_tuning/jobs", params={"status": "bogus"}), 400, param="status")
        assert client.get("/v1/fine_tuning/jobs", params={"status": "queued"}).status_code == 200
