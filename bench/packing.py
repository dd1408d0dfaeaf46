"""Useful tokens per second, packed vs padded, on a length-skewed dataset, through the worker's own code.

Each run is `worker.training.train_adapter` (what a job's process runs) in a fresh process, on the same
data and spec but `packing`; runs alternate (padded, packed, packed, padded, ...) so drift on a shared
machine hits both alike. Useful tokens are the dataset's tokens after truncation (the estimate's
`train_tokens`, exact for a small file); the time is from the first logged step to the last, so loading
and export, the same for both, are left out. It prints the median ratio packed / padded and its spread.

    .venv/bin/python bench/packing.py            # about 8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 8, "max_seq_len": 256, "logging_steps": 1}
EXAMPLES = 240


def skewed_dataset(path: Path) -> Path:
    """Most examples short, a few long: the shape of real chat data, where padding wastes the most."""
    rng = random.Random(0)
    with path.open("w") as out:
        for index in range(EXAMPLES):
            words = int(rng.paretovariate(1.2) * 6)  # a heavy tail: median ~ 10 words, a few past 200
            text = " ".join(f"w{rng.randrange(300)}" for _ in range(min(words, 400)))
            out.write(json.dumps({"text": f"{index} {text}"}) + "\n")
    return path


def spec(packing: bool) -> Any:
    from loraq.jobs.spec import JobCreate

    hyperparameters = HYPERPARAMETERS | {"packing": packing}
    return JobCreate.model_validate(
        {
            "model": "bench",
            "training_file": "file-bench",
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        }
    )


class StepClock:
    """A reporter that notes when each step was logged, and nothing else."""

    def __init__(self) -> None:
        self.logged: list[float] = []

    def on_progress(self, progress: dict[str, Any]) -> None: ...
    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        if "loss" in metrics or "train_loss" in metrics:
            self.logged.append(time.perf_counter())

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None: ...
    def on_baseline(self, evaluation: dict[str, Any] | None, base_samples: list[dict[str, Any]]) -> None: ...
    def on_evaluation(
        self, step: int, evaluation: dict[str, Any] | None, samples: list[dict[str, Any]]
    ) -> None: ...
    def should_stop(self) -> bool:
        return False


def child(model_dir: Path, data: Path, packing: bool, work: Path) -> dict[str, Any]:
    from loraq.jobs import estimate
    from worker.training import train_adapter
    from worker.training.contracts import TrainingRequest

    job = spec(packing)
    useful = estimate.estimate_job(request=job, train_path=data, dataset_format="text", model_dir=model_dir)
    clock = StepClock()
    request = TrainingRequest(
        base_model_path=model_dir,
        base_model_name=model_dir.name,
        train_path=data,
        dataset_format="text",
        validation_path=None,
        output_dir=work,
        hyperparameters=job.requested_hyperparameters.resolve(n_examples=EXAMPLES),
        adapter=job.adapter,
        seed=7,
    )
    train_adapter(request, clock)
    steps = len(clock.logged)
    # Steps 2..N over their time: the first step's own time is not measured.
    seconds = clock.logged[-1] - clock.logged[0]
    tokens = useful["train_tokens"] * (steps - 1) / steps
    return {"packing": packing, "steps": steps, "useful_tokens_per_second": tokens / seconds}


def run(model_dir: Path, data: Path, packing: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loraq-packing-") as work:
        command = [sys.executable, __file__, "--child", "packed" if packing else "padded"]
        command += ["--model-dir", str(model_dir), "--data", str(data), "--work", work]
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=os.environ | {"HF_HUB_OFFLINE": "1"}
        )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-4000:])
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, help="default: the 70M model bench/memory.py builds")
    parser.add_argument("--child")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model_dir, args.data, args.child == "packed", args.work)))
        return

    from bench.memory import write_model
    from worker.demo_model import ensure_demo_model

    root = Path(tempfile.gettempdir()) / "loraq-bench-memory"
    model_dir = args.model_dir or root / "70M"
    write_model(model_dir, "70M", ensure_demo_model(root / "demo"))
    data = skewed_dataset(root / "skewed.jsonl")
    ratios, padded, packed = [], [], []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        speeds = {packing: run(model_dir, data, packing) for packing in order}
        padded.append(speeds[False])
        packed.append(speeds[True])
        ratios.append(speeds[True]["useful_tokens_per_second"] / speeds[False]["useful_tokens_per_second"])
        print(f"pair {pair + 1}: padded {speeds[False]}, packed {speeds[True]}", flush=True)
    print(
        f"{EXAMPLES} length-skewed examples, batch {HYPERPARAMETERS['batch_size']}, max_seq_len "
        f"{HYPERPARAMETERS['max_seq_len']}, {model_dir.name}"
    )
    for name, runs in (("padded", padded), ("packed", packed)):
        speed = statistics.median(r["useful_tokens_per_second"] for r in runs)
        print(f"{name}: {speed:.0f} useful tokens/s (median), {runs[0]['steps']} steps")
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(f"packed / padded: {statistics.median(ratios):.2f}x (median; range {spread})")


if __name__ == "__main__":
    main()
