"""Under load the API answers 200 or 503-with-Retry-After and recovers at once; the access log can be
turned off; uploads are written once; lists come in pages; an estimate of a large file is sampled, in a
process of its own, which stops with the API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import FAST_HYPERPARAMETERS, chat_dataset, job_body, method, upload
from tests.stack import Stack, spawned_children

CONCURRENT_GETS = 128


@pytest.fixture
def small_api(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """An API alone (no worker), with a deliberately small pool: 2 requests at once, 2 connections."""
    stack = Stack(
        name="small-pool",
        home=tmp_path,
        env={
            "LORAQ_HOME": str(tmp_path),
            "LORAQ_DATABASE_URL": database_url,
            "LORAQ_API_CONCURRENCY": "2",
            "LORAQ_DB_POOL_SIZE": "2",
            "LORAQ_DB_POOL_TIMEOUT_SECONDS": "0.2",
        },
    )
    stack.start_api()
    yield stack
    stack.stop()


async def _burst(stack: Stack, path: str, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {stack.admin_key}"}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers=headers, limits=limits, timeout=30
    ) as client:
        return list(await asyncio.gather(*(client.get(path) for _ in range(count))))


def test_overload_is_answered_with_503_and_retry_after_then_the_api_recovers(small_api: Stack) -> None:
    with small_api.client() as client:
        for index in range(21):
            upload(client, chat_dataset(2), filename=f"f{index}.jsonl")
        answers = asyncio.run(_burst(small_api, "/v1/files", CONCURRENT_GETS))
        statuses = [answer.status_code for answer in answers]
        assert set(statuses) <= {200, 503}, statuses
        busy = [answer for answer in answers if answer.status_code == 503]
        assert all(answer.headers.get("Retry-After") == "1" for answer in busy)
        assert all(answer.json()["error"]["code"] == "service_unavailable" for answer in busy)
        assert statuses.count(200) > 0
        # No stall after the burst: the next request is served, by a client that waits only a little.
        assert client.get("/v1/files", timeout=5).status_code == 200

        # A page of 20 by default; more on request, up to OpenAI's 10,000.
        page = client.get("/v1/files").json()
        assert len(page["data"]) == 20 and page["has_more"]
        assert len(client.get("/v1/files", params={"limit": 100}).json()["data"]) == 21


def test_an_api_with_no_live_worker_is_not_ready(small_api: Stack) -> None:
    """/readyz tells a load balancer or an operator that jobs would wait: no worker is alive to run them."""
    answer = httpx.get(small_api.base_url + "/readyz")
    assert answer.status_code == 503
    assert "no live worker" in answer.json()["error"]["message"]
    assert httpx.get(small_api.base_url + "/healthz").status_code == 200  # the API itself is up


def test_the_access_log_can_be_turned_off(tmp_path: Path) -> None:
    stack = Stack(name="quiet", home=tmp_path, env={"LORAQ_HOME": str(tmp_path), "LORAQ_ACCESS_LOG": "false"})
    stack.start_api()
    try:
        for _ in range(5):
            assert httpx.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200
        with stack.client() as client:
            assert client.get("/v1/files").status_code == 200
    finally:
        stack.stop()
    log = (tmp_path / "api.log").read_text()
    assert "loraq API on http://" in log, "the API's own lines stay"
    assert "uvicorn.access" not in log and "GET /healthz" not in log


def test_an_upload_is_written_once(stack: Stack) -> None:
    # 2 MB through the API: what it writes (every write call: spool, store, logs, sockets) stays near that.
    content = chat_dataset(12000)
    assert len(content) > 2_000_000
    api = psutil.Process(stack.api.pid if stack.api else 0)
    before = api.io_counters().write_chars
    with stack.client() as client:
        upload(client, content)
    written = api.io_counters().write_chars - before
    assert len(content) <= written < 1.25 * len(content), written


def _text_dataset(examples: int) -> bytes:
    lines = [{"text": "word " * (1 + index % 40)} for index in range(examples)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_a_large_files_estimate_is_sampled_in_another_process(stack: Stack) -> None:
    with stack.client() as client:
        file_id = upload(client, _text_dataset(5000))["id"]
        body = job_body(file_id, method=method(**FAST_HYPERPARAMETERS))
        gets: list[int] = []
        stop = threading.Event()

        def poll() -> None:
            with stack.client() as poller:
                while not gets or not stop.is_set():  # at least one, however fast the estimate
                    gets.append(poller.get(f"/v1/files/{file_id}").status_code)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            answer = client.post("/v1/fine_tuning/jobs/estimate", json=body)
        finally:
            stop.set()
            poller.join()
        assert answer.status_code == 200, answer.text
        estimate: dict[str, Any] = answer.json()
        assert estimate["examples"] == 5000
        sampled = estimate["sampled"]
        assert (
            sampled["of"] == 5000
            and 0 < sampled["examples"] < 5000
            and sampled["tokens_relative_error"] < 0.1
        )
        assert gets and set(gets) == {200}
        # Tokenized outside the API process: in its spawned estimating process.
        assert stack.api is not None
        estimators = spawned_children(stack.api.pid)
        # ... and at a lower priority than the API, whose requests get the CPU first.
        assert estimators and all(
            child.nice() >= psutil.Process(stack.api.pid).nice() + 10 for child in estimators
        )
        # Asked again: the same answer, from the cache.
        assert client.post("/v1/fine_tuning/jobs/estimate", json=body).json() == estimate


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_estimating_process_stops_with_the_api_killed_alone(
    how: signal.Signals, tmp_path: Path, demo_model: Path
) -> None:
    """A supervisor that signals only the API's pid (make serve, systemd's KillMode=process), or the OOM
    killer, leaves the API's children running; uvicorn's clean stop ends by re-raising SIGTERM, before
    the estimating process hears it should stop. It must not wait forever for work that never comes."""
    shutil.copytree(demo_model, tmp_path / "models" / demo_model.name)
    stack = Stack(name="estimating", home=tmp_path, env={"LORAQ_HOME": str(tmp_path)})
    stack.start_api()
    try:
        with stack.client() as client:
            file_id = upload(client, chat_dataset(8))["id"]
            body = job_body(file_id, method=method(**FAST_HYPERPARAMETERS))
            assert client.post("/v1/fine_tuning/jobs/estimate", json=body).status_code == 200
        assert stack.api is not None
        [estimator] = spawned_children(stack.api.pid)
        os.kill(stack.api.pid, how)  # the API alone, not its process group
        stack.api.wait(timeout=30)
        gone, alive = psutil.wait_procs([estimator], timeout=10)
        assert gone and not alive, f"the estimating process {estimator.pid} outlived the API"
    finally:
        stack.stop()
