"""What the tests share: test data, job bodies, walks over the API, and job rows for state-machine tests.

Nothing here imports torch: the training helpers import the engine only when called.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from loraq.base_models.catalog import DEMO_MODEL_NAME
from loraq.core.db import make_engine
from loraq.core.migrate import upgrade_to_head
from loraq.files.validation import DatasetLimits, DatasetSummary, DatasetValidator
from loraq.jobs.spec import AdapterSpec, Hyperparameters, JobCreate
from loraq.jobs.states import TERMINAL, JobStatus
from loraq.jobs.tables import Job
from loraq.projects.tables import Project
from loraq.storage.hashing import CHUNK_BYTES

if TYPE_CHECKING:
    from worker.training.contracts import TrainingRequest

POSTGRES_ADMIN_URL = os.environ.get("LORAQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LORAQ_TEST_REDIS", "redis://127.0.0.1:6379/11")
# Fast leases and reconciles so fault tests finish in seconds, not minutes.
FAST_TIMINGS = {
    "LORAQ_HEARTBEAT_SECONDS": "1",
    "LORAQ_LEASE_SECONDS": "6",
    "LORAQ_RECONCILE_SECONDS": "2",
    # Tests that act between two steps (kill past a checkpoint) need to see steps as they come.
    "LORAQ_REPORT_INTERVAL_SECONDS": "0.2",
}

FINISHED = frozenset(status.value for status in TERMINAL)
FAST_HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "max_seq_len": 64}
BUNDLE_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.json",
    "metrics.jsonl",
    "manifest.json",
    "README.md",
}


# --- data ---------------------------------------------------------------------------------------------


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(jsonl(records))
    return path


def chat_dataset(n: int = 24) -> bytes:
    """A small chat dataset whose answers follow a pattern a tiny model can pick up fast."""
    return jsonl(
        [
            {
                "messages": [
                    {"role": "system", "content": "You answer with the color."},
                    {"role": "user", "content": f"What color is item {i}?"},
                    {"role": "assistant", "content": "blue blue blue"},
                ]
            }
            for i in range(n)
        ]
    )


def validate(
    data: bytes, *, chunk_size: int = CHUNK_BYTES, limits: DatasetLimits | None = None
) -> DatasetSummary:
    """Feed data through a DatasetValidator in chunks of chunk_size bytes, as an upload arrives."""
    validator = DatasetValidator(limits or DatasetLimits())
    for start in range(0, len(data), chunk_size):
        validator.feed(data[start : start + chunk_size])
    return validator.finish()


# --- job specs ----------------------------------------------------------------------------------------


def method(**hyperparameters: Any) -> dict[str, Any]:
    """A job body's `method`: supervised, with these hyperparameters."""
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def job_body(training_file: str, **fields: Any) -> dict[str, Any]:
    """The body of a job create on the demo model; fields add to it (adapter=..., method=method(...))."""
    return {"model": DEMO_MODEL_NAME, "training_file": training_file, **fields}


def job_create(**fields: Any) -> JobCreate:
    """A validated job spec, for tests of the spec and the estimate that need no stored file."""
    return JobCreate.model_validate(job_body("file-1", **fields))


def slow_dataset(n: int) -> bytes:
    """Long examples, so each training step takes long enough to kill a worker in the middle."""
    answer = " ".join(f"token{i % 50}" for i in range(180))
    return jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": f"Say the sequence {i}."},
                    {"role": "assistant", "content": answer},
                ]
            }
            for i in range(n)
        ]
    )


# --- the API ------------------------------------------------------------------------------------------


def upload(client: httpx.Client, content: bytes, filename: str = "train.jsonl") -> dict[str, Any]:
    response = client.post("/v1/files", files={"file": (filename, content)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def create_job(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def pages(client: httpx.Client, path: str, **params: Any) -> Iterator[list[dict[str, Any]]]:
    """Each page of a list, following its `after` cursor while `has_more`."""
    after = None
    while True:
        page = client.get(path, params={**params, **({"after": after} if after else {})}).json()
        yield page["data"]
        if not page["has_more"]:
            return
        after = page["data"][-1]["id"]


def all_pages(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    return [item for page in pages(client, path, limit=100) for item in page]


def bundle_files(client: httpx.Client, file_id: str) -> dict[str, bytes]:
    """A result file's .tar.gz, unpacked in memory: each member's name and bytes."""
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def download_bundle(client: httpx.Client, file_id: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in bundle_files(client, file_id).items():
        (dest / name).write_bytes(data)
    return dest


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """A bundle's manifest.json: what it was trained from, with its steps and final metrics."""
    manifest: dict[str, Any] = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    return manifest


# --- the training engine ------------------------------------------------------------------------------


class RecordingReporter:
    """Keeps everything training reports; says stop once should_stop has been asked `stop_after` times."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.progress: list[dict[str, Any]] = []
        self.metrics: list[tuple[int, dict[str, Any]]] = []
        self.checkpoints: list[tuple[int, Path, dict[str, Any]]] = []
        self.baseline: tuple[dict[str, Any] | None, list[dict[str, Any]]] | None = None
        self.evaluations: list[tuple[int, dict[str, Any] | None, list[dict[str, Any]]]] = []
        self.stop_checks = 0
        self.stop_after = stop_after

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.progress.append(progress)

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self.metrics.append((step, metrics))

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        self.checkpoints.append((step, path, metrics))

    def on_baseline(self, evaluation: dict[str, Any] | None, base_samples: list[dict[str, Any]]) -> None:
        self.baseline = (evaluation, base_samples)

    def on_evaluation(
        self, step: int, evaluation: dict[str, Any] | None, samples: list[dict[str, Any]]
    ) -> None:
        self.evaluations.append((step, evaluation, samples))

    def should_stop(self) -> bool:
        self.stop_checks += 1
        return self.stop_after is not None and self.stop_checks >= self.stop_after

    def train_losses(self) -> list[float]:
        return [metrics["train_loss"] for _, metrics in self.metrics if "train_loss" in metrics]


def training_request(
    directory: Path,
    demo_model: Path,
    records: list[dict[str, Any]],
    dataset_format: str,
    *,
    hyperparameters: Hyperparameters,
    adapter: AdapterSpec,
    validation: list[dict[str, Any]] | None = None,
    merged: bool = False,
) -> TrainingRequest:
    """A request to train on the demo model, its data written as JSONL into directory."""
    from worker.training.contracts import TrainingRequest

    directory.mkdir(parents=True, exist_ok=True)
    return TrainingRequest(
        base_model_path=demo_model,
        base_model_name=DEMO_MODEL_NAME,
        train_path=write_jsonl(directory / "train.jsonl", records),
        dataset_format=dataset_format,
        validation_path=write_jsonl(directory / "validation.jsonl", validation) if validation else None,
        output_dir=directory / "run",
        hyperparameters=hyperparameters.resolve(n_examples=len(records)),
        adapter=adapter,
        seed=7,
        merged=merged,
    )


# --- job rows -----------------------------------------------------------------------------------------


def migrated_engine(url: str) -> Engine:
    """An engine on a database migrated to head."""
    upgrade_to_head(url)
    return make_engine(url)


def new_job(session: Session, project_name: str = "lifecycle-test", **fields: Any) -> str:
    """A queued job row, in a project of that name (made on first use); `fields` replace its columns'
    placeholders (an empty spec, which no API answer would validate)."""
    project = session.scalars(select(Project).where(Project.name == project_name)).first()
    if project is None:
        project = Project(name=project_name)
        session.add(project)
        session.flush()
    placeholders: dict[str, Any] = {
        "model": "m",
        "base_model": "m",
        "training_file": "file-x",
        "seed": 1,
        "method": {},
        "hyperparameters": {},
        "adapter": {},
        "status": JobStatus.QUEUED.value,
        "result_files": [],
    }
    job = Job(project_id=project.id, **{**placeholders, **fields})
    session.add(job)
    session.flush()
    return job.id


# --- processes ---------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextmanager
def peak_rss_growth(pid: int) -> Iterator[list[int]]:
    """Samples a process's resident memory while the block runs; yields [growth], set at the end."""
    baseline = peak = rss_bytes(pid)
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    growth = [0]
    try:
        yield growth
    finally:
        sampling = False
        sampler.join()
        growth[0] = peak - baseline


def newest_checkpoint_step(client: httpx.Client, job_id: str) -> int:
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    return max((c["step_number"] for c in checkpoints), default=0)


def job_failing_in_the_worker(client: httpx.Client) -> dict[str, Any]:
    """Create a job that passes every check at create and fails in the worker: its validation file
    (which the create does not tokenize) has no token to evaluate on after truncation."""
    hello = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    short = jsonl([{"messages": hello}] * 4)
    too_long = jsonl([{"messages": [{"role": "system", "content": "context " * 40}, *hello]}] * 4)
    body = job_body(
        upload(client, short)["id"],
        validation_file=upload(client, too_long)["id"],
        adapter={"type": "lora", "r": 4},
        method=method(**{**FAST_HYPERPARAMETERS, "max_seq_len": 24}),
    )
    return create_job(client, body)
