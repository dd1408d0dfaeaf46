"""What the service adds to training: a job through API + queue + worker vs a bare Trainer + peft script.

Both train the same model on the same data with the same spec; runs are interleaved (job, bare, bare,
job, ...) so drift on a shared machine hits both alike. It prints, per job size, the median and spread
of wall(job) / wall(bare), and the queue pickup (create answered → worker claimed the job).

    .venv/bin/python bench/overhead.py                       # embedded deployment (SQLite, filesystem broker)
    .venv/bin/python bench/overhead.py --database-url postgresql://postgres@127.0.0.1/bench \\
        --broker-url redis://127.0.0.1:6379/15               # Postgres + Redis

With --side-by-side the job and the bare script run at the same time, each pinned to a core of its own
(the cores swap each repeat), so a host whose speed drifts between minutes slows both alike; --control
adds the bare script against itself on the same two cores, the method's own spread.
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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

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

    def __init__(
        self, home: Path, model_root: Path, extra_env: dict[str, str], core: int | None = None
    ) -> None:
        self.home = home
        self.core = core  # all its processes on this one CPU (side by side), or wherever the OS puts them
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
                    pinned([str(BIN / name)], self.core),
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


class BareRun(NamedTuple):
    wall: float  # process start to exit, as a person would run it
    imports: float  # of which importing torch, transformers and peft (a warm worker has done it already)


def run_bare(
    model_dir: Path, data: bytes, spec: dict[str, Any], scratch: Path, core: int | None = None
) -> BareRun:
    """The bare script's wall time, and its imports' share of it."""
    folder = scratch / f"bare-{core}"
    folder.mkdir(exist_ok=True)
    train = folder / "train.jsonl"
    train.write_bytes(data)
    started = time.monotonic()
    finished = subprocess.run(
        pinned(
            [
                sys.executable,
                str(REPO / "bench" / "bare_trainer.py"),
                str(model_dir),
                str(train),
                str(folder / "out"),
                "--spec",
                json.dumps(spec),
            ],
            core,
        ),
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    wall = time.monotonic() - started
    return BareRun(wall, json.loads(finished.stdout.splitlines()[-1])["imports"])


def pinned(command: list[str], core: int | None) -> list[str]:
    """The command run on one CPU only: it, its threads and its children (torch then uses one thread)."""
    return command if core is None else ["taskset", "--cpu-list", str(core), *command]


def side_by_side(
    args: argparse.Namespace,
    spec: dict[str, Any],
    sizes: dict[str, int],
    env: dict[str, str],
    model_dir: Path,
    scratch: Path,
) -> None:
    """The job and the bare script at the same time, each on a core of its own.

    Run one after the other, the two are timed minutes apart, and this host's speed drifts by more than
    the 2% to be measured (the same bare script took 119 to 180 s). Run at once, both see the same host.
    Every process of the deployment (API, worker, the job's child, the chat process) is on the job's core,
    so what the service does beside training is paid out of the job's own CPU. The cores swap each repeat;
    with --control, the bare script also runs against itself on the two cores, which shows what this
    method can resolve (ideally 1.000).
    """
    ratios: dict[str, list[float]] = {name: [] for name in sizes}
    trained: dict[str, list[float]] = {name: [] for name in sizes}  # the bare script's imports left out
    controls: dict[str, list[float]] = {name: [] for name in sizes}
    for repeat in range(args.repeats):
        job_core, bare_core = (1, 0) if repeat % 2 == 0 else (0, 1)
        home = scratch / f"home-{repeat}"
        home.mkdir()
        deployment = Deployment(home, model_dir.parent, env, core=job_core)
        deployment.start()
        try:
            run_job(deployment, model_dir.name, chat_examples(16), spec)  # warm: not counted
            for name, count in sizes.items():
                data = chat_examples(count)
                with ThreadPoolExecutor(1) as pool:
                    bare_run = pool.submit(run_bare, model_dir, data, spec, scratch, bare_core)
                    job, pickup = run_job(deployment, model_dir.name, data, spec)
                    bare = bare_run.result()
                ratios[name].append(job / bare.wall)
                trained[name].append(job / (bare.wall - bare.imports))
                print(
                    f"  {name}: job {job:.1f}s on cpu {job_core}, bare {bare.wall:.1f}s on cpu {bare_core} "
                    f"({bare.imports:.1f}s of imports), ratio {job / bare.wall:.3f}, without the bare "
                    f"script's imports {trained[name][-1]:.3f}, pickup {pickup * 1000:.0f} ms",
                    flush=True,
                )
                if args.control:
                    with ThreadPoolExecutor(1) as pool:
                        other_run = pool.submit(run_bare, model_dir, data, spec, scratch, bare_core)
                        this = run_bare(model_dir, data, spec, scratch, job_core)
                        other = other_run.result()
                    controls[name].append(this.wall / other.wall)
                    print(
                        f"  {name} control: bare {this.wall:.1f}s on cpu {job_core}, bare {other.wall:.1f}s "
                        f"on cpu {bare_core}, ratio {controls[name][-1]:.3f}",
                        flush=True,
                    )
        finally:
            deployment.stop()
    broker = "redis" if args.broker_url else "embedded filesystem broker"
    print(f"\nModel {model_dir.name}; side by side, one core each, {args.repeats} repeats; broker: {broker}")
    # The geometric mean over an even number of repeats cancels a core that is faster than the other:
    # each ratio is the service's factor times (or divided by) the cores' own.
    for name in sizes:
        lines = [
            (f"{name} ({sizes[name]} examples): wall ratio job/bare", ratios[name]),
            (f"{name} without the bare script's imports:", trained[name]),
            (f"{name} control, bare/bare on the same two cores:", controls[name]),
        ]
        for heading, values in lines:
            if values:
                print(f"{heading} {summary(values)}, geometric mean {statistics.geometric_mean(values):.3f}")


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
    parser.add_argument(
        "--side-by-side", action="store_true", help="job and bare script at once, one core each (taskset)"
    )
    parser.add_argument("--control", action="store_true", help="side by side: also bare against bare")
    args = parser.parse_args()
    # A stopped run still stops the deployment it started (the `finally` below): its processes have a
    # session of their own and would otherwise go on.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

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
    given = {"LORAQ_DATABASE_URL": args.database_url, "LORAQ_BROKER_URL": args.broker_url}
    env = {name: value for name, value in given.items() if value}
    with tempfile.TemporaryDirectory(prefix="loraq-overhead-") as tmp:
        scratch = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            from worker.demo_model import ensure_demo_model

            model_dir = ensure_demo_model(scratch / "models")
        if args.side_by_side:
            side_by_side(args, spec, sizes, env, model_dir, scratch)
            return
        deployment = Deployment(scratch / "home", model_dir.parent, env)
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
                        bare = run_bare(model_dir, data, spec, scratch).wall
                    else:
                        bare = run_bare(model_dir, data, spec, scratch).wall
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
