"""Faults injected for real against Postgres + Redis: a killed worker, a flushed broker, a restarted
database, a 1 GiB upload. Each promise in the README's Guarantees section is one of these tests."""

from __future__ import annotations

import glob
import json
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import REDIS_URL, upload
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.parametrize("stack", ["postgres"], indirect=True)

FINISHED = {"succeeded", "failed", "cancelled"}


def slow_dataset(n: int) -> bytes:
    """Long examples, so each training step takes long enough to kill a worker in the middle."""
    answer = " ".join(f"token{i % 50}" for i in range(180))
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"Say the sequence {i}."},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def events_of(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    events, after = [], None
    while True:
        page = client.get(
            f"/v1/fine_tuning/jobs/{job_id}/events",
            params={"limit": 100, **({"after": after} if after else {})},
        ).json()
        events += page["data"]
        if not page["has_more"]:
            return events
        after = page["data"][-1]["id"]


def newest_checkpoint_step(client: httpx.Client, job_id: str) -> int:
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    return max((c["step_number"] for c in checkpoints), default=0)


def test_killed_workers_lose_nothing(stack: Stack) -> None:
    examples, batch, epochs, kills = 48, 8, 8, 5
    planned_steps = epochs * math.ceil(examples / batch)
    with stack.client() as client:
        training = upload(client, slow_dataset(examples))
        job = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "loraq-tiny-demo",
                "training_file": training["id"],
                "seed": 3,
                "adapter": {"type": "lora", "r": 4},
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": epochs,
                            "batch_size": batch,
                            "learning_rate": 1e-3,
                            "max_seq_len": 512,
                            "save_steps": 3,
                        }
                    },
                },
            },
        ).json()

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

        done = stack.wait_for_job(job["id"], FINISHED, timeout=300)
        assert done["status"] == "succeeded", (done["error"], stack.all_worker_logs())
        assert len(done["result_files"]) == 1
        assert done["progress"]["step"] == done["progress"]["total_steps"] == planned_steps

        events = all_events(client, job["id"])
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


def test_flushed_broker_loses_no_job(stack: Stack, no_worker: None) -> None:
    with stack.client() as client:
        training = upload(client, slow_dataset(4))
        body = {
            "model": "loraq-tiny-demo",
            "training_file": training["id"],
            "adapter": {"type": "lora", "r": 2},
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_len": 64}},
            },
        }
        job_ids = [client.post("/v1/fine_tuning/jobs", json=body).json()["id"] for _ in range(3)]
    broker = redis.Redis.from_url(REDIS_URL)
    assert broker.llen("celery") >= 3, "the jobs were published before the flush"
    broker.flushdb()
    assert broker.llen("celery") == 0

    stack.start_worker()
    started = time.monotonic()
    for job_id in job_ids:
        assert stack.wait_for_job(job_id, FINISHED, timeout=180)["status"] == "succeeded"
    # The reconciler's promise: republished within a few of its intervals (2 s here), plus training.
    assert time.monotonic() - started < 150


def postgres_cluster() -> tuple[str, str]:
    [version_dir] = glob.glob("/etc/postgresql/*")
    return Path(version_dir).name, "main"


def pg_ctl(action: str) -> None:
    version, cluster = postgres_cluster()
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            cluster,
            action,
            *(["-m", "fast"] if action == "stop" else []),
        ],
        check=True,
        capture_output=True,
    )


def test_database_restart_gives_503_then_recovers(stack: Stack) -> None:
    with stack.client() as client:
        assert client.get("/v1/files").status_code == 200
        pg_ctl("stop")
        try:
            for path in ("/v1/files", "/v1/fine_tuning/jobs", "/readyz"):
                started = time.monotonic()
                response = client.get(path, timeout=30)
                assert response.status_code == 503, (path, response.text)
                error = response.json()["error"]
                assert error["type"] == "server_error" and error["code"] == "service_unavailable"
                assert time.monotonic() - started < 15, "an outage is an answer, never a hang"
        finally:
            pg_ctl("start")
        wait_for(
            lambda: client.get("/v1/files").status_code == 200,
            timeout=60,
            what="the API to serve again after the database returned",
        )
        assert client.get("/readyz").status_code == 200


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_1gib_upload_is_refused_with_flat_memory(stack: Stack) -> None:
    assert stack.api is not None
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

    baseline = rss_bytes(stack.api.pid)
    peak = baseline
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_bytes(stack.api.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with stack.client() as client:
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
    finally:
        sampling = False
        sampler.join()
    assert peak - baseline < 100 * 1024 * 1024, f"API memory grew by {(peak - baseline) >> 20} MiB"


def redis_ctl(action: str) -> None:
    if action == "stop":
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], capture_output=True
        )
        return
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=True,
        capture_output=True,
    )
    wait_for(lambda: redis.Redis.from_url(REDIS_URL).ping(), timeout=30, what="redis to answer")


def test_broker_outage_is_not_ready_but_loses_no_job(stack: Stack) -> None:
    with stack.client() as client:
        training = upload(client, slow_dataset(4))
        redis_ctl("stop")
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "broker" in ready.json()["error"]["message"]
            started = time.monotonic()
            created = client.post(
                "/v1/fine_tuning/jobs",
                json={
                    "model": "loraq-tiny-demo",
                    "training_file": training["id"],
                    "adapter": {"type": "lora", "r": 2},
                    "method": {
                        "type": "supervised",
                        "supervised": {
                            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_len": 64}
                        },
                    },
                },
                timeout=60,
            )
            # Postgres is the source of truth: the job is stored even though nobody could be told yet.
            assert created.status_code == 200, created.text
            assert time.monotonic() - started < 30
        finally:
            redis_ctl("start")
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what="/readyz after redis")
    assert stack.wait_for_job(created.json()["id"], FINISHED, timeout=180)["status"] == "succeeded"
