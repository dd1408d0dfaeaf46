"""A project's storage limit holds under concurrency and counts what workers write; checkpoints are
retained by save_total_limit and their resume state goes once the job is finished (issue 8, point 3)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import FAST_HYPERPARAMETERS, chat_dataset, create_job, job_body, method, upload
from tests.stack import Stack, start_stack, wait_for
from tests.test_tenancy import project_key


def test_concurrent_uploads_never_exceed_the_limit(stack: Stack) -> None:
    content = chat_dataset(1)
    limit = 2000
    secret = project_key(stack, name=f"tight-{stack.name}", max_storage_bytes=limit)

    def send(_: int) -> int:
        with stack.client(secret) as client:
            return client.post(
                "/v1/files", files={"file": ("t.jsonl", content)}, data={"purpose": "fine-tune"}
            ).status_code

    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(send, range(30)))
    assert set(statuses) == {200, 429}, statuses
    with stack.client(secret) as client:
        stored = client.get("/v1/files").json()["data"]
    # Checked and inserted under the project's lock: exactly as many as fit, never one more.
    assert sum(f["bytes"] for f in stored) <= limit
    assert len(stored) == statuses.count(200) == limit // len(content)


def test_a_job_that_would_exceed_its_projects_storage_fails_with_a_clear_error(stack: Stack) -> None:
    content = chat_dataset(8)
    # Room for the dataset, none for what the worker writes (a checkpoint is tens of kB).
    secret = project_key(stack, name=f"no-room-{stack.name}", max_storage_bytes=len(content) + 1000)
    with stack.client(secret) as client:
        training = upload(client, content)
        job = create_job(
            client, job_body(training["id"], adapter={"type": "lora"}, method=method(**FAST_HYPERPARAMETERS))
        )
        failed = stack.wait_for_job(job["id"], {"failed", "succeeded"}, key=secret)
        assert failed["error"]["code"] == "limit_exceeded"
        assert "storage limit" in failed["error"]["message"]
        files = client.get("/v1/files").json()["data"]
        assert [f["id"] for f in files] == [training["id"]]


@pytest.fixture
def own_stack(tmp_path: Path, demo_model: Path) -> Iterator[Stack]:
    """A deployment with no other job, so its store holds only this test's blobs."""
    stack = start_stack("retention", tmp_path / "home", demo_model, {})
    yield stack
    stack.stop()


def test_checkpoints_are_retained_by_save_total_limit_and_resume_state_goes_at_the_end(
    own_stack: Stack,
) -> None:
    stack = own_stack
    resume_blobs = stack.home / "artifacts" / "checkpoints"
    with stack.client() as client:
        training = upload(client, chat_dataset(16))
        hyperparameters = FAST_HYPERPARAMETERS | {"batch_size": 2, "save_steps": 2, "save_total_limit": 2}
        job = create_job(
            client, job_body(training["id"], adapter={"type": "lora"}, method=method(**hyperparameters))
        )
        done = stack.wait_for_success(job["id"])
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", params={"limit": 100})
        steps = [(c["step_number"], c["result_file"]) for c in checkpoints.json()["data"]]
        assert len(steps) >= 4, steps
        # Newest first: the two newest keep their adapter bundles, the older ones gave theirs up.
        assert all(file is not None for _, file in steps[:2]) and all(file is None for _, file in steps[2:])
        results = client.get("/v1/files", params={"purpose": "fine-tune-results", "limit": 100}).json()[
            "data"
        ]
        kept = {file for _, file in steps[:2]} | set(done["result_files"])
        assert {f["id"] for f in results} == kept
        for file_id in kept:
            assert client.get(f"/v1/files/{file_id}/content").status_code == 200
    # A finished job resumes no more: the reconciler deletes every resume state it kept.
    wait_for(lambda: not any(resume_blobs.iterdir()), timeout=30, what="the resume state to be deleted")
    assert httpx.get(stack.base_url + "/healthz").status_code == 200
