"""A job says when nothing can move it: its worker died and no other is alive; and when it should finish."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import create_job, job_body, method, slow_dataset, upload
from tests.stack import Stack, start_stack, wait_for


@pytest.fixture
def lone_worker_stack(tmp_path: Path, demo_model: Path) -> Iterator[Stack]:
    """A deployment of its own: this test kills its only worker."""
    stack = start_stack("lone-worker", tmp_path / "home", demo_model, {})
    yield stack
    stack.stop()


def test_a_job_says_when_no_worker_is_alive_to_run_or_resume_it(lone_worker_stack: Stack) -> None:
    stack = lone_worker_stack
    with stack.client() as client:
        training = upload(client, slow_dataset(40))
        body = job_body(training["id"], adapter={"type": "lora"}, method=method(n_epochs=5, batch_size=1))
        job_id = create_job(client, body)["id"]

        def get() -> dict[str, Any]:
            job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            return job

        # Running, it says when it should finish: its latest progress report plus the ETA.
        running = wait_for(
            lambda: (job := get())["estimated_finish"] is not None and job,
            timeout=120,
            what="a progress report with an ETA",
        )
        assert running["status"] == "running" and running["status_details"] is None
        progress = running["progress"]
        assert running["estimated_finish"] == int(progress["reported_at"] + progress["eta_seconds"])
        assert running["estimated_finish"] >= running["created_at"]

        stack.kill_worker(stack.workers[0])
        # Within a lease (6 s here) the job's own status says why it is stuck.
        # (Its lease and the worker's own heartbeat lapse within a second of each other.)
        orphaned = wait_for(
            lambda: "no worker is alive to resume it" in ((job := get())["status_details"] or "") and job,
            timeout=30,
            what="status_details to say no worker is alive",
        )
        assert orphaned["status"] == "running" and "lease expired" in orphaned["status_details"]
        waiting = create_job(client, body)
        assert waiting["status"] == "queued"
        assert client.get(f"/v1/fine_tuning/jobs/{waiting['id']}").json()["status_details"] == (
            "waiting for a worker: no worker is alive"
        )
        listed = {job["id"]: job for job in client.get("/v1/fine_tuning/jobs").json()["data"]}
        assert "no worker is alive" in listed[job_id]["status_details"]

        # A worker starts: the orphaned job is resumed and stops saying it is stuck.
        stack.start_worker()
        wait_for(lambda: get()["status_details"] is None, timeout=120, what="the job to be resumed")
        assert get()["status"] == "running"
        client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        client.post(f"/v1/fine_tuning/jobs/{waiting['id']}/cancel")
