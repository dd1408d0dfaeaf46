"""What the service adds to training: a job through API + queue + worker vs a bare Trainer + peft script.

Both train the same model on the same data with the same spec; runs are interleaved (job, bare, bare,
job, ...) so drift on a shared machine hits both alike. It prints, per job size, the median and spread
of wall(job) / wall(bare), and the queue pickup (create answered → worker claimed the job).

    .venv/bin/python bench/overhead.py                       # embedded deployment (SQLite, filesystem broker)
    .venv/bin/python bench/overhead.py --database-url postgresql://postgres@127.0.0.1/bench \\
        --broker-url redis://127.0.0.1:6379/15               # Postgres + Redis
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))


HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate", "max_seq_len", "packing", "logging_steps")


POLL_SECONDS = 1.0


def chat_examples(n: int, seed: int = 0) -> bytes:
    """Chat examples of varied length, answers a small model can learn."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = " ".join(f"w{rng.randrange(200)}" for _ in range(rng.randrange(8, 40)))
        record = {
            "messages": [
                {"role": "user", "content": f"Repeat item {i}: {words}"},
                {"role": "assistant", "content": f"Item {i}: {words}"},
            ]
        }
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    """`loraq-api` and one `loraq-worker`, as `make serve` runs them."""

    def __init__(self, home: Path, model_root: Path, extra_env: dict[str, str]) -> None:
        self.home = home
        self.port = free_port()
        self.env = {
            **os.environ,
            "LORAQ_HOME": str(home),
            "LORAQ_MODEL_DIRS": json.dumps([str(model_root)]),
            "LORAQ_LOG_FORMAT": "json",
            "PORT": str(self.port),
            "HF_HUB_OFFLINE": "1",
            **extra_env,
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        subprocess.run([str(BIN / "loraq-migrate")], env=self.env, check=True)
        for name in ("loraq-api", "loraq-worker"):
            log = (self.home / f"{name}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [str(BIN / name)],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the deployment did not become ready; see " + str(self.home))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        key = (self.home / "admin.key").read_text().strip()
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def logged_at(self, job_id: str, what: str) -> float:
        """When the worker logged "job <id> <what>" (claimed, succeeded), from its JSON log line.

        "succeeded" is logged just after the status is committed, so the line may lag the API's answer.
        """
        deadline = time.monotonic() + 30
        while True:
            for line in (self.home / "loraq-worker.log").read_text().splitlines():
                if f"job {job_id} {what}" in line:
                    entry = json.loads(line[line.index("{") :])
                    return datetime.fromisoformat(entry["time"]).timestamp()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no '{what}' of {job_id} in the worker's log")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def run_job(deployment: Deployment, model: str, data: bytes, spec: dict[str, Any]) -> tuple[float, float]:
    """Upload, create, wait: (wall seconds from create to succeeded, pickup seconds)."""
    with deployment.client() as client:
        uploaded = client.post(
            "/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}
        )
        uploaded.raise_for_status()
        body = {
            "model": model,
            "training_file": uploaded.json()["id"],
            "seed": spec["seed"],
            "adapter": {"type": "lora", "r": spec["r"], "alpha": spec["alpha"], "dropout": spec["dropout"]},
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {name: spec[name] for name in HYPERPARAMETERS}},
            },
        }
        started = time.time()
        created = client.post("/v1/fine_tuning/jobs", json=body)
        created_at = time.time()
        created.raise_for_status()
        job_id = created.json()["id"]
        while True:
            # Polled as a client would (the CLI looks every 2 s): polling every 50 ms, as this script
            # first did, cost the API ~20 GETs a second of CPU, taken on 2 cores from the job measured.
            time.sleep(POLL_SECONDS)
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
    # The end is the worker's own "succeeded" line (millisecond times), so the poll adds no wait.
    wall = deployment.logged_at(job_id, "succeeded") - started
    return wall, deployment.logged_at(job_id, "claimed") - created_at


def run_bare(model_dir: Path, data: bytes, spec: dict[str, Any], scratch: Path) -> float:
    """The bare script's wall time, process start to exit, as a person would run it."""
    train = scratch / "bare-train.jsonl"
    train.write_bytes(data)
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bare_trainer.py"),
            str(model_dir),
            str(train),
            str(scratch / "bare-out"),
            "--spec",
            json.dumps(spec),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return time.monotonic() - started


def summary(values: list[float]) -> str:
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"median {middle:.3f} (min {low:.3f}, max {high:.3f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="a local model dir (default: the tiny demo model)")
    parser.add_argument("--sizes", default="short=300,long=1200", help="name=examples,... one job size each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--broker-url", default="")
    args = parser.parse_args()

    spec = {
        "seed": 7,
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate": 2e-4,
        "max_seq_len": 128,
        "packing": False,
        "logging_steps": 1,
    }
    sizes = {name: int(count) for name, count in (item.split("=") for item in args.sizes.split(","))}
    with tempfile.TemporaryDirectory(prefix="loraq-overhead-") as tmp:
        scratch = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            from worker.demo_model import ensure_demo_model

            model_dir = ensure_demo_model(scratch / "models")
        env = {"LORAQ_DATABASE_URL": args.database_url, "LORAQ_BROKER_URL": args.broker_url}
        deployment = Deployment(scratch / "home", model_dir.parent, {k: v for k, v in env.items() if v})
        deployment.home.mkdir()
        deployment.start()
        ratios: dict[str, list[float]] = {name: [] for name in sizes}
        walls: dict[str, list[tuple[float, float]]] = {name: [] for name in sizes}
        pickups: list[float] = []
        try:
            # Not counted: the first run of each warms the page cache, and the worker may still be
            # importing its training stack when the API first answers ready.
            warm_up = chat_examples(16)
            run_job(deployment, model_dir.name, warm_up, spec)
            run_bare(model_dir, warm_up, spec, scratch)
            for repeat in range(args.repeats):
                for name, count in sizes.items():
                    data = chat_examples(count)
                    # Alternate which runs first, so a warming machine favours neither.
                    if repeat % 2 == 0:
                        job, pickup = run_job(deployment, model_dir.name, data, spec)
                        bare = run_bare(model_dir, data, spec, scratch)
                    else:
                        bare = run_bare(model_dir, data, spec, scratch)
                        job, pickup = run_job(deployment, model_dir.name, data, spec)
                    ratios[name].append(job / bare)
                    walls[name].append((job, bare))
                    pickups.append(pickup)
                    print(
                        f"  {name}: job {job:.1f}s, bare {bare:.1f}s, ratio {job / bare:.3f}, "
                        f"pickup {pickup * 1000:.0f} ms",
                        flush=True,
                    )
        finally:
            deployment.stop()
    broker = "redis" if args.broker_url else "embedded filesystem broker"
    print(f"\nModel {model_dir.name}; {args.repeats} interleaved repeats; broker: {broker}")
    for name in sizes:
        job_median = statistics.median(job for job, _ in walls[name])
        bare_median = statistics.median(bare for _, bare in walls[name])
        print(
            f"{name} ({sizes[name]} examples): job {job_median:.1f}s vs bare {bare_median:.1f}s; "
            f"wall ratio {summary(ratios[name])}"
        )
    print(f"queue pickup seconds: {summary(pickups)}")


if __name__ == "__main__":
    main()
