"""What a worker writes for a job, on real deployments: nothing once the job is cancelled, one metrics
point a step across a kill and resume, no scratch left behind by a killed worker, and logs a
machine can read and a person can trust."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from loraq.jobs import repository, runs
from loraq.jobs.states import Lease
from tests.helpers import (
    FAST_HYPERPARAMETERS,
    all_pages,
    chat_dataset,
    create_job,
    job_body,
    job_failing_in_the_worker,
    method,
    migrated_engine,
    new_job,
    newest_checkpoint_step,
    slow_dataset,
    upload,
)
from tests.stack import Stack, start_stack, wait_for


def lora_job(client: httpx.Client, training_file: str, **hyperparameters: Any) -> dict[str, Any]:
    body = job_body(training_file, seed=5, adapter={"type": "lora", "r": 4}, method=method(**hyperparameters))
    return create_job(client, body)


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Newest first."""
    return all_pages(client, f"/v1/fine_tuning/jobs/{job_id}/events")


def metrics_steps(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["step"] for e in events if e["type"] == "metrics"]


def worker_log(stack: Stack) -> str:
    """Every worker's whole log (Stack.logs keeps only a tail)."""
    return "\n".join(
        (stack.home / f"worker-{i}.log").read_text(errors="replace") for i in range(len(stack.workers))
    )


def results_of(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    files = client.get("/v1/files", params={"purpose": "fine-tune-results", "limit": 100}).json()["data"]
    return [f for f in files if f["filename"].startswith(job_id)]


@pytest.fixture
def leased_job(database_url: str) -> Iterator[tuple[Session, Lease]]:
    """A job claimed by a worker, in a session on SQLite and then on Postgres."""
    engine = migrated_engine(database_url)
    with sessionmaker(bind=engine)() as session:
        lease = runs.claim(session, new_job(session), owner="w1", lease_seconds=30, max_attempts=3)
        assert lease is not None
        yield session, lease
    engine.dispose()


def recorded(session: Session, lease: Lease) -> tuple[list[str], list[int]]:
    """The job's event messages (oldest first) and checkpoint steps."""
    project_id = repository.get_job_for_worker(session, lease.job_id).project_id
    events = repository.list_events(
        session, project_id=project_id, job_id=lease.job_id, after=None, limit=100
    )
    checkpoints = repository.list_checkpoints(
        session, project_id=project_id, job_id=lease.job_id, after=None, limit=100
    )
    return [e.message for e in reversed(events.items)], [c.step_number for c in checkpoints.items]


def test_no_write_lands_once_the_job_is_cancelled(leased_job: tuple[Session, Lease]) -> None:
    session, lease = leased_job
    assert runs.record_reports(session, lease, metrics=[(1, {"train_loss": 1.5})])
    before = recorded(session, lease)
    assert runs.cancel(session, lease.job_id)
    assert not runs.record_reports(session, lease, progress={"step": 2})
    assert not runs.record_reports(session, lease, metrics=[(2, {"train_loss": 1.4})])
    refused = runs.add_checkpoint(
        session, lease, step=2, metrics={}, storage_key="checkpoints/x", resume_bytes=1, keep_bundles=3
    )
    assert refused is None
    assert not runs.resume(session, lease, from_step=1)
    messages, checkpoints = recorded(session, lease)
    assert messages == [*before[0], "Job cancelled"] and checkpoints == []
    assert repository.get_job_for_worker(session, lease.job_id).progress is None


def test_resuming_drops_the_metrics_past_the_checkpoint(leased_job: tuple[Session, Lease]) -> None:
    session, lease = leased_job
    for step in range(1, 7):
        assert runs.record_reports(session, lease, metrics=[(step, {"train_loss": 1.0 / step})])
    stale = runs.add_checkpoint(
        session, lease, step=4, metrics={}, storage_key="checkpoints/x", resume_bytes=1, keep_bundles=3
    )
    assert stale == []
    assert runs.resume(session, lease, from_step=4)
    messages, _ = recorded(session, lease)
    assert [m.split(":")[0] for m in messages if m.startswith("Step ")] == [f"Step {i}" for i in range(1, 5)]
    assert messages[-1] == "Resuming from the checkpoint at step 4"


def test_a_cancelled_job_gets_nothing_more_written(stack: Stack) -> None:
    # One example a step and no save_steps: the only checkpoint would come at the end of an epoch of
    # 300 steps, far past the cancel at step 3, where a stopping run still ends its epoch.
    with stack.client() as client:
        training = upload(client, slow_dataset(300))
        job = lora_job(client, training["id"], n_epochs=5, batch_size=1, max_seq_len=512, learning_rate=1e-3)

        def training_steps() -> bool:
            return max(metrics_steps(all_events(client, job["id"])), default=0) >= 3

        wait_for(training_steps, timeout=180, what="three training steps")
        cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        wait_for(
            lambda: f"job {job['id']} stopped" in worker_log(stack),
            timeout=60,
            what="the worker to stop the cancelled job",
        )
        time.sleep(3)  # anything the stopped run still had to write would be written by now

        events = all_events(client, job["id"])  # newest first
        assert events[0]["message"] == "Job cancelled", [e["message"] for e in events[:10]]
        assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []
        assert results_of(client, job["id"]) == []
        final = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        assert final["status"] == "cancelled" and final["result_files"] == []


@dataclass
class KilledAndResumed:
    job: dict[str, Any]  # as it finished
    killed_at_step: int  # the last step the killed run logged
    checkpoint_step: int  # the step the next run resumed from
    scratch_of_killed: list[Path]
    events: list[dict[str, Any]]
    metrics_jsonl: list[dict[str, Any]]


@pytest.fixture(scope="module")
def killed_and_resumed(stack: Stack) -> Iterator[KilledAndResumed]:
    """A job whose worker is killed (SIGKILL, whole process group) a few steps past a checkpoint."""
    save_steps = 5
    with stack.client() as client:
        training = upload(client, slow_dataset(40))
        job = lora_job(
            client,
            training["id"],
            n_epochs=3,
            batch_size=4,
            max_seq_len=512,
            learning_rate=1e-3,
            save_steps=save_steps,
        )

        def between_checkpoints() -> bool:
            step = max(metrics_steps(all_events(client, job["id"])), default=0)
            # Steps arrive in batches: any of the first three past a checkpoint leaves room to kill.
            return step > save_steps and step % save_steps in (1, 2, 3)

        wait_for(between_checkpoints, timeout=180, interval=0.1, what="a step just past a checkpoint")
        scratch = sorted((stack.home / "scratch").glob(f"{job['id']}*"))
        for worker in stack.workers:
            if worker.poll() is None:
                stack.kill_worker(worker)
        killed_at = max(metrics_steps(all_events(client, job["id"])))
        checkpoint = newest_checkpoint_step(client, job["id"])
        assert killed_at > checkpoint, "killed exactly at a checkpoint: nothing to train again"
        stack.start_worker()
        done = stack.wait_for_job(job["id"], timeout=300)
        assert done["status"] == "succeeded", (done["error"], worker_log(stack)[-6000:])
        bundle = client.get(f"/v1/files/{done['result_files'][0]}/content").content
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            member = tar.extractfile("metrics.jsonl")
            assert member is not None
            metrics_jsonl = [json.loads(line) for line in member.read().decode().splitlines()]
        yield KilledAndResumed(
            job=done,
            killed_at_step=killed_at,
            checkpoint_step=checkpoint,
            scratch_of_killed=scratch,
            events=all_events(client, job["id"]),
            metrics_jsonl=metrics_jsonl,
        )


def test_a_resumed_job_has_one_metrics_point_a_step(killed_and_resumed: KilledAndResumed) -> None:
    resumed = killed_and_resumed
    total = resumed.job["progress"]["total_steps"]
    assert any(
        e["message"] == f"Resuming from the checkpoint at step {resumed.checkpoint_step}"
        for e in resumed.events
    )
    steps = metrics_steps(resumed.events)
    assert [step for step, count in Counter(steps).items() if count > 1] == []
    assert sorted(steps) == list(range(1, total + 1))
    logged = [entry["step"] for entry in resumed.metrics_jsonl if "loss" in entry]
    assert sorted(logged) == list(range(1, total + 1)), logged
    assert sum("train_loss" in entry for entry in resumed.metrics_jsonl) == 1, "one end-of-run summary"


def test_a_killed_workers_scratch_is_removed(killed_and_resumed: KilledAndResumed, stack: Stack) -> None:
    job_id = killed_and_resumed.job["id"]
    assert killed_and_resumed.scratch_of_killed, "the job's scratch lives under LORAQ_HOME/scratch"
    for path in killed_and_resumed.scratch_of_killed:
        assert not path.exists(), f"{path} outlived the worker that was killed"
    assert list((stack.home / "scratch").glob(f"{job_id}*")) == [], "the run that finished kept its scratch"
    assert list(Path(tempfile.gettempdir()).glob(f"loraq-{job_id}*")) == []


@pytest.fixture(scope="module")
def json_logging_stack(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[Stack]:
    stack = start_stack(
        "json-logs", tmp_path_factory.mktemp("json-logs"), demo_model, {"LORAQ_LOG_FORMAT": "json"}
    )
    yield stack
    stack.stop()


def test_worker_logs_are_json_with_each_jobs_real_outcome(json_logging_stack: Stack) -> None:
    stack = json_logging_stack
    with stack.client() as client:
        failing = job_failing_in_the_worker(client)
        passing = lora_job(client, upload(client, chat_dataset())["id"], **FAST_HYPERPARAMETERS)
        failed = stack.wait_for_job(failing["id"])
        succeeded = stack.wait_for_job(passing["id"])
        assert failed["status"] == "failed" and succeeded["status"] == "succeeded"
        steps = metrics_steps(all_events(client, passing["id"]))
    # The last lines of a run can come just after the job's status does.
    wait_for(lambda: f"job {passing['id']} succeeded" in worker_log(stack), timeout=30, what="the job's end")

    records = [json.loads(line) for line in worker_log(stack).splitlines() if line.strip()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record

    def of(job_id: str) -> list[dict[str, Any]]:
        return [r for r in records if r.get("job_id") == job_id or job_id in r["message"]]

    ends = [r for r in of(failing["id"]) if r["message"].startswith(f"job {failing['id']} failed: ")]
    assert [r["level"] for r in ends] == ["ERROR"], of(failing["id"])
    assert failed["error"]["message"] in ends[0]["message"]
    assert not any(re.search(r"succeeded in .*'failed'", r["message"]) for r in records), "no Celery success"

    step_lines = [
        r
        for r in of(passing["id"])
        if re.fullmatch(rf"job {passing['id']} step \d+/\d+, train_loss [\d.]+, \d+ tokens/s", r["message"])
    ]
    assert len(step_lines) == len(steps) > 0, of(passing["id"])
    assert {r["level"] for r in step_lines} == {"INFO"}
    assert all(r["job_id"] == passing["id"] for r in step_lines)
    assert not any("Loading weights" in r["message"] or "it/s]" in r["message"] for r in records)


def test_an_api_killed_mid_upload_leaves_nothing_behind(tmp_path: Path, demo_model: Path) -> None:
    """Upload spools live under $LORAQ_HOME/scratch, named by their process: a dead one's go at start."""
    home = tmp_path / "home"
    scratch = home / "scratch"
    scratch.mkdir(parents=True)
    # What an API process killed mid-upload leaves: its spool, named for a pid that no longer runs.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = scratch / f"upload@{socket.gethostname()}@{dead.pid}@abc123.jsonl"
    stale.write_bytes(b'{"text": "half an upload"}\n' * 1000)
    stack = start_stack("spools", home, demo_model, {})
    try:
        assert not stale.exists(), "the API removes a dead process's spool when it starts"
        in_tmp = set(Path(tempfile.gettempdir()).iterdir())
        with stack.client() as client:
            upload(client, chat_dataset(4))
        # A finished upload's spool is gone too (renamed into the store), and nothing went to /tmp.
        assert list(scratch.glob("upload@*")) == []
        assert [p for p in set(Path(tempfile.gettempdir()).iterdir()) - in_tmp if "upload" in p.name] == []
    finally:
        stack.stop()
