"""Faults injected for real against Postgres + Redis: a killed worker, a flushed broker, a restarted
database, a 1 GiB upload. Each promise in the README's Guarantees section is one of these tests.

The database and broker here are private servers (tests/services.py): stopping or flushing them leaves
the machine's own, which the rest of the suite shares, alone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.helpers import (
    POSTGRES_ADMIN_URL,
    REDIS_URL,
    all_pages,
    create_job,
    job_body,
    method,
    newest_checkpoint_step,
    peak_rss_growth,
    slow_dataset,
    upload,
)
from tests.services import PostgresServer, RedisServer, private_postgres, private_redis
from tests.stack import Stack, start_stack, wait_for


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    with private_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with private_redis() as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    demo_model: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Stack]:
    """An API and a worker on the private servers (it replaces conftest's shared-server stack here)."""
    env = {
        "LORAQ_DATABASE_URL": postgres_server.create_database("loraq"),
        "LORAQ_BROKER_URL": redis_server.url,
    }
    stack = start_stack("faults", tmp_path_factory.mktemp("faults"), demo_model, env)
    yield stack
    stack.stop()


def machine_services() -> tuple[object, object]:
    """When the machine's Postgres started and which run its Redis is: a restart changes either."""
    with psycopg.connect(POSTGRES_ADMIN_URL) as connection:
        row = connection.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0], redis.Redis.from_url(REDIS_URL).info("server")["run_id"]


@pytest.fixture(scope="module", autouse=True)
def machine_services_before() -> tuple[object, object]:
    return machine_services()


def one_epoch_job(training_file: str) -> dict[str, Any]:
    """A small LoRA job of one epoch: it succeeds soon after a worker takes it."""
    return job_body(
        training_file,
        adapter={"type": "lora", "r": 2},
        method=method(n_epochs=1, batch_size=4, max_seq_len=64),
    )


def test_killed_workers_lose_nothing(stack: Stack) -> None:
    # Two kills, each past a new checkpoint: resuming a resumed run is what the second one proves.
    examples, batch, epochs, kills = 48, 8, 4, 2
    planned_steps = epochs * math.ceil(examples / batch)
    with stack.client() as client:
        training = upload(client, slow_dataset(examples))
        hyperparameters = method(
            n_epochs=epochs, batch_size=batch, learning_rate=1e-3, max_seq_len=512, save_steps=3
        )
        body = job_body(training["id"], seed=3, adapter={"type": "lora", "r": 4}, method=hyperparameters)
        job = create_job(client, body)

        last_checkpoint = 0
        for kill in range(kills):

            def next_checkpoint(after: int = last_checkpoint) -> int | None:
                state = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
                assert state["status"] in {"queued", "running"}, state["error"]
                step = newest_checkpoint_step(client, job["id"])
                return step if step > after else None

            last_checkpoint = wait_for(
                next_checkpoint, timeout=180, interval=0.2, what=f"a checkpoint before kill {kill + 1}"
            )
            assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running"
            for worker in stack.workers:
                if worker.poll() is None:
                    stack.kill_worker(worker)  # SIGKILL to the worker's whole process group
            stack.start_worker()

        done = stack.wait_for_success(job["id"], timeout=300)
        assert len(done["result_files"]) == 1
        assert done["progress"]["step"] == done["progress"]["total_steps"] == planned_steps

        events = all_pages(client, f"/v1/fine_tuning/jobs/{job['id']}/events")
        messages = [e["message"] for e in events]
        assert messages.count("The job has successfully completed") == 1
        resumed = [e for e in events if e["message"].startswith("Resuming from the checkpoint at step")]
        assert len(resumed) >= kills, messages
        bundles = [
            f
            for f in client.get("/v1/files", params={"purpose": "fine-tune-results"}).json()["data"]
            if f["filename"] == f"{job['id']}-adapter.tar.gz"
        ]
        assert [b["id"] for b in bundles] == done["result_files"]


@pytest.fixture
def no_worker(stack: Stack) -> Iterator[None]:
    """Stop the stack's workers for the test; leave one running afterwards for the tests that follow."""
    for worker in stack.workers:
        if worker.poll() is None:
            stack.kill_worker(worker)
    yield
    if all(worker.poll() is not None for worker in stack.workers):
        stack.start_worker()


def test_flushed_broker_loses_no_job(stack: Stack, no_worker: None, redis_server: RedisServer) -> None:
    with stack.client() as client:
        training = upload(client, slow_dataset(4))
        job_ids = [create_job(client, one_epoch_job(training["id"]))["id"] for _ in range(3)]
    broker = redis.Redis.from_url(redis_server.url)
    assert broker.llen("celery") >= 3, "the jobs were published before the flush"
    broker.flushdb()
    assert broker.llen("celery") == 0

    stack.start_worker()
    started = time.monotonic()
    for job_id in job_ids:
        stack.wait_for_success(job_id, timeout=180)
    # The reconciler's promise: republished within a few of its intervals (2 s here), plus training.
    assert time.monotonic() - started < 150


def test_database_restart_gives_503_then_recovers(stack: Stack, postgres_server: PostgresServer) -> None:
    with stack.client() as client:
        assert client.get("/v1/files").status_code == 200
        postgres_server.stop()
        try:
            for path in ("/v1/files", "/v1/fine_tuning/jobs", "/readyz"):
                started = time.monotonic()
                response = client.get(path, timeout=30)
                assert response.status_code == 503, (path, response.text)
                error = response.json()["error"]
                assert error["type"] == "server_error" and error["code"] == "service_unavailable"
                assert time.monotonic() - started < 15, "an outage is an answer, never a hang"
        finally:
            postgres_server.start()
        wait_for(
            lambda: client.get("/v1/files").status_code == 200,
            timeout=60,
            what="the API to serve again after the database returned",
        )
        assert client.get("/readyz").status_code == 200


def test_1gib_upload_is_refused_with_flat_memory(stack: Stack) -> None:
    assert stack.api is not None
    api_pid = stack.api.pid
    boundary = "loraqboundary"
    line = (json.dumps({"text": "x" * 1000}) + "\n").encode()
    total = 1 << 30

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        chunk = line * 1024  # about 1 MiB
        for _ in range(total // len(chunk) + 1):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    with peak_rss_growth(api_pid) as growth, stack.client() as client:
        files_before = client.get("/v1/files").json()["data"]
        # No Content-Length: the server has to count as the bytes arrive.
        response = client.post(
            "/v1/files",
            content=body(),
            timeout=300,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"
        assert client.get("/v1/files").json()["data"] == files_before
    assert growth[0] < 100 * 1024 * 1024, f"API memory grew by {growth[0] >> 20} MiB"


def test_broker_outage_is_not_ready_but_loses_no_job(stack: Stack, redis_server: RedisServer) -> None:
    with stack.client() as client:
        training = upload(client, slow_dataset(4))
        redis_server.stop()
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "broker" in ready.json()["error"]["message"]
            started = time.monotonic()
            created = client.post("/v1/fine_tuning/jobs", json=one_epoch_job(training["id"]), timeout=60)
            # Postgres is the source of truth: the job is stored even though nobody could be told yet.
            assert created.status_code == 200, created.text
            assert time.monotonic() - started < 30
        finally:
            redis_server.start()
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what="/readyz after redis")
    stack.wait_for_success(created.json()["id"], timeout=180)


def test_the_machines_services_were_left_alone(machine_services_before: tuple[object, object]) -> None:
    """Last in this module: the faults above reached only the private servers."""
    assert machine_services() == machine_services_before
