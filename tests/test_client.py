"""loraq.client: typed answers and errors, retries that never do the work twice (a create whose answer is
lost on the way back makes one job), the wait generator, and downloads checked before they are trusted."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import socket
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

from loraq.base_models.catalog import DEMO_MODEL_NAME
from loraq.client import (
    ChecksumMismatch,
    Client,
    InvalidRequestError,
    LoraqClientError,
    RetryPolicy,
    ServerError,
)
from loraq.jobs.spec import AdapterSpec, JobCreate
from tests.helpers import chat_dataset
from tests.stack import Stack

FAST_RETRIES = RetryPolicy(retries=3, backoff=0.01)


# --- a proxy that loses the first answer ---------------------------------------------------------------


def read_message(stream: BinaryIO) -> bytes | None:
    """One HTTP/1.1 message (head and a Content-Length body) from a stream; None at its end."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return None
        head += line
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:")), 0)
    return head + stream.read(length)


class DroppingProxy:
    """Relays HTTP between a client and the server, but the first request that starts with `drop` reaches
    the server and its answer is thrown away: the client's connection is closed instead."""

    def __init__(self, upstream_port: int, drop: bytes) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            from_client, from_upstream = client.makefile("rb"), upstream.makefile("rb")
            while (request := read_message(from_client)) is not None:
                upstream.sendall(request)
                answer = read_message(from_upstream)
                if answer is None:
                    return
                if request.startswith(self.drop) and not self.dropped:
                    self.dropped += 1
                    return  # the server did the work; the client never hears of it
                client.sendall(answer)

    def close(self) -> None:
        self.listener.close()


@contextmanager
def dropping_proxy(stack: Stack, drop: bytes) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(stack.port, drop)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_create_whose_answer_is_lost_is_retried_into_one_job(stack: Stack, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_dataset(8))
    tag = secrets.token_hex(6)
    with (
        dropping_proxy(stack, b"POST /v1/fine_tuning/jobs ") as proxy,
        Client(f"http://127.0.0.1:{proxy.port}", stack.admin_key, retry=FAST_RETRIES) as client,
    ):
        training = client.files.upload(data)
        adapter, metadata = AdapterSpec(type="lora", r=4), {"probe": tag}
        job = client.jobs.create(
            JobCreate(model=DEMO_MODEL_NAME, training_file=training.id, adapter=adapter, metadata=metadata)
        )
        assert proxy.dropped == 1  # the first answer was lost; the retry got the same job
        same = client.jobs.list(metadata={"probe": tag}).data
        assert [j.id for j in same] == [job.id]

        # Cancelled from the side, the wait ends with it; each event is yielded once.
        updates = client.jobs.wait(job.id, poll_interval=0.2, timeout=120)
        first = next(updates)
        client.jobs.cancel(job.id)
        rest = list(updates)
        assert rest[-1].job.status == "cancelled" and not any(u.job.finished for u in [first, *rest[:-1]])
        events = [event.id for update in [first, *rest] for event in update.new_events]
        assert len(events) == len(set(events)) == len(client.jobs.events(job.id, limit=100).data)
        with pytest.raises(LoraqClientError, match="no adapter"):
            client.jobs.download(job.id, tmp_path / "unused")


def test_an_upload_whose_answer_is_lost_stores_one_file(stack: Stack, tmp_path: Path) -> None:
    data = tmp_path / f"{secrets.token_hex(6)}.jsonl"
    data.write_bytes(chat_dataset(4))
    with (
        dropping_proxy(stack, b"POST /v1/files ") as proxy,
        Client(f"http://127.0.0.1:{proxy.port}", stack.admin_key, retry=FAST_RETRIES) as client,
    ):
        uploaded = client.files.upload(data)
        assert proxy.dropped == 1
        named = [f.id for f in client.files.list().data if f.filename == data.name]
        assert named == [uploaded.id]


# --- errors, against a server --------------------------------------------------------------


def test_errors_carry_the_api_shape(stack: Stack) -> None:
    with Client(stack.base_url, stack.admin_key) as client:
        with pytest.raises(InvalidRequestError) as invalid:
            client.jobs.create({"model": DEMO_MODEL_NAME, "training_file": "file-nope", "adapter": {"r": 0}})
        assert (invalid.value.status, invalid.value.param) == (400, "adapter.r")
        assert invalid.value.type == "invalid_request_error" and invalid.value.message
        with pytest.raises(InvalidRequestError) as missing:
            client.jobs.get("ftjob-missing")
        assert missing.value.status == 404
    with Client(stack.base_url, "sk-wrong") as client, pytest.raises(InvalidRequestError) as refused:
        client.models.list()
    assert refused.value.status == 401 and "sk-wrong" not in str(refused.value) + repr(client)


# --- retries and downloads, on a scripted transport ----------------------------------------------------


def scripted(answers: list[httpx.Response | Exception], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle)


JOB = {"id": "ftjob-1", "model": "m", "status": "queued", "created_at": 1, "training_file": "file-1"}


def test_a_busy_server_is_retried_with_one_idempotency_key_and_its_retry_after() -> None:
    seen: list[httpx.Request] = []
    slept: list[float] = []
    busy = httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {"message": "busy"}})
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        busy,
        httpx.RemoteProtocolError("no answer"),
        httpx.Response(200, json=JOB),
    ]
    with Client("http://loraq", "k", transport=scripted(answers, seen), sleep=slept.append) as client:
        job = client.jobs.create({"model": "m", "training_file": "file-1"})
    assert job.id == "ftjob-1"
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 4 and len(keys) == 1
    assert slept == [0.5, 2.0, 2.0]  # backoff, then Retry-After, then backoff again


def test_what_may_have_been_done_is_not_resent_without_a_key() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [httpx.ReadError("reset")]
    transport = scripted(answers, seen)
    with (
        Client("http://loraq", "k", transport=transport, sleep=lambda _: None) as client,
        pytest.raises(LoraqClientError),
    ):
        client.jobs.cancel("ftjob-1")
    assert len(seen) == 1


def test_a_5xx_that_outlasts_the_retries_is_a_server_error() -> None:
    seen: list[httpx.Request] = []
    down = {"error": {"message": "down", "type": "server_error"}}
    transport = scripted([httpx.Response(503, json=down) for _ in range(5)], seen)
    with (
        Client("http://loraq", "k", transport=transport, sleep=lambda _: None) as client,
        pytest.raises(ServerError) as error,
    ):
        client.models.list()
    assert error.value.status == 503 and error.value.message == "down" and len(seen) == 5


def file_server(content: bytes, sha256: str, filename: str = "x-adapter.tar.gz") -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/content"):
            return httpx.Response(200, content=content)
        if request.url.path.startswith("/v1/files/"):
            meta = {"id": "file-1", "bytes": len(content), "created_at": 1, "filename": filename}
            return httpx.Response(200, json={**meta, "purpose": "fine-tune-results", "sha256": sha256})
        return httpx.Response(200, json={**JOB, "status": "succeeded", "result_files": ["file-1"]})

    return httpx.MockTransport(handle)


def test_a_download_that_does_not_match_its_sha256_is_refused(tmp_path: Path) -> None:
    transport = file_server(b"tampered", hashlib.sha256(b"original").hexdigest())
    with Client("http://loraq", "k", transport=transport) as client, pytest.raises(ChecksumMismatch):
        client.files.download("file-1", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_a_bundle_that_escapes_its_directory_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        evil = tarfile.TarInfo("../escaped.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    bundle = buffer.getvalue()
    transport = file_server(bundle, hashlib.sha256(bundle).hexdigest())
    with Client("http://loraq", "k", transport=transport) as client, pytest.raises(LoraqClientError):
        client.jobs.download("ftjob-1", tmp_path / "adapter")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_job_request_is_sent_as_set() -> None:
    seen: list[httpx.Request] = []
    with Client("http://loraq", "k", transport=scripted([httpx.Response(200, json=JOB)], seen)) as client:
        adapter = AdapterSpec(type="lora", r=4)
        client.jobs.create(JobCreate(model="m", training_file="file-1", adapter=adapter))
    body: dict[str, Any] = json.loads(seen[0].content)
    assert body["adapter"] == {"type": "lora", "r": 4} and body["model"] == "m"
