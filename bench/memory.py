"""Peak memory of the worker's own training process, beside loraq's estimate of it.

Each case runs `worker.training.train_adapter` (the function a worker's job process runs: data, model,
Trainer, export) in a fresh process with a recording reporter, as a job does, and reads the process's
peak RSS (VmHWM: imports, loading, every step and the export) and its baseline after the imports. No
allocator setting and no copy a worker does not make. Beside it: `POST /v1/fine_tuning/jobs/estimate`'s
figure for the same spec and file on this device (`loraq/jobs/estimate.py`, "cpu").

Two Llama-architecture models are built offline from configs (seeded random weights, the demo model's
tokenizer, a 32,000-entry vocabulary): nothing is downloaded.

    make bench                          # runs this with the other benchmarks
    .venv/bin/python bench/memory.py    # 4 cases x --runs (default 2), a few minutes each on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: import loraq and worker from this checkout

MiB = 2**20
# Llama-3-like proportions (GQA, SwiGLU at 2.75 x hidden), small enough for a CPU.
SIZES: dict[str, dict[str, int]] = {
    "70M": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8},
    "250M": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
    },
}
ADAPTERS: dict[str, dict[str, Any]] = {
    "LoRA auto": {"type": "lora"},  # "auto" is float32 on a CPU worker
    "QLoRA nf4": {"type": "qlora", "quantization": {"bits": 4, "compute_dtype": "auto"}},
}
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 2, "max_seq_len": 256, "logging_steps": 1}
EXAMPLES = 8


def write_model(model_dir: Path, size: str, demo_model: Path) -> None:
    """A random Llama of this size, with the demo model's tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (model_dir / "config.json").exists():
        return
    model_dir.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (demo_model / name).exists():
            shutil.copy(demo_model / name, model_dir / name)
    config = LlamaConfig(
        vocab_size=32000,
        num_key_value_heads=SIZES[size]["num_attention_heads"] // 4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
        **SIZES[size],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)


def write_dataset(path: Path) -> Path:
    """Texts longer than max_seq_len: every batch is full, as a real job's longest batch is."""
    words = "the quick brown fox jumps over the lazy dog and reads every book on the shelf "
    path.write_text(
        "".join(json.dumps({"text": f"{index} " + words * 40}) + "\n" for index in range(EXAMPLES))
    )
    return path


def job_spec(adapter: dict[str, Any]) -> Any:
    from loraq.jobs.spec import JobCreate

    return JobCreate.model_validate(
        {
            "model": "bench",
            "training_file": "file-bench",
            "method": {"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
            "adapter": adapter,
        }
    )


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Reporter:
    """What a job's reporter is told, kept and ignored: training never waits on it."""

    def on_progress(self, progress: dict[str, Any]) -> None: ...
    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None: ...
    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None: ...
    def on_baseline(self, evaluation: dict[str, Any] | None, base_samples: list[dict[str, Any]]) -> None: ...
    def on_evaluation(
        self, step: int, evaluation: dict[str, Any] | None, samples: list[dict[str, Any]]
    ) -> None: ...
    def should_stop(self) -> bool:
        return False


def child(model_dir: Path, data: Path, adapter_name: str, work: Path) -> dict[str, Any]:
    """In a fresh process: import as the worker does, then train and export one job."""
    from worker.training import train_adapter
    from worker.training.contracts import TrainingRequest

    baseline = status_bytes("VmRSS")
    spec = job_spec(ADAPTERS[adapter_name])
    request = TrainingRequest(
        base_model_path=model_dir,
        base_model_name=model_dir.name,
        train_path=data,
        dataset_format="text",
        validation_path=None,
        output_dir=work,
        hyperparameters=spec.requested_hyperparameters.resolve(n_examples=EXAMPLES),
        adapter=spec.adapter,
        seed=7,
    )
    train_adapter(request, Reporter())
    return {"baseline": baseline, "peak": status_bytes("VmHWM")}


def measure(model_dir: Path, data: Path, adapter_name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loraq-memory-") as work:
        command = [sys.executable, __file__, "--child", adapter_name, "--model-dir", str(model_dir)]
        command += ["--data", str(data), "--work", work]
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=os.environ | {"HF_HUB_OFFLINE": "1"}
        )
    if result.returncode != 0:
        raise RuntimeError(f"{adapter_name} failed:\n{result.stderr[-4000:]}")
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def estimated(model_dir: Path, data: Path, adapter_name: str) -> dict[str, int]:
    from loraq.jobs import estimate

    answer = estimate.estimate_job(
        request=job_spec(ADAPTERS[adapter_name]),
        train_path=data,
        dataset_format="text",
        model_dir=model_dir,
        device="cpu",
        auto_compute_dtype="float32",
    )
    memory: dict[str, int] = answer["memory_bytes"]
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2, help="runs of each case, interleaved")
    parser.add_argument("--child")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model_dir, args.data, args.child, args.work)))
        return

    from worker.demo_model import ensure_demo_model

    root = Path(tempfile.gettempdir()) / "loraq-bench-memory"
    demo = ensure_demo_model(root / "demo")
    data = write_dataset(root / "train.jsonl")
    cases = [(size, adapter) for size in SIZES for adapter in ADAPTERS]
    for size in SIZES:
        write_model(root / size, size, demo)
    peaks: dict[tuple[str, str], list[dict[str, Any]]] = {case: [] for case in cases}
    for run in range(args.runs):
        for size, adapter in cases if run % 2 == 0 else list(reversed(cases)):
            peaks[(size, adapter)].append(measure(root / size, data, adapter))
    print(
        f"batch {HYPERPARAMETERS['batch_size']} x {HYPERPARAMETERS['max_seq_len']} tokens,"
        f" {args.runs} runs each (median; range)"
    )
    header = f"{'model':6} {'adapter':10} {'baseline':>9} {'peak MiB':>9} {'range':>11}"
    header += f" {'estimate':>9} {'est/peak':>8}"
    print(header + "  estimate parts (MiB)")
    for size, adapter in cases:
        runs = peaks[(size, adapter)]
        peak = statistics.median(r["peak"] for r in runs) / MiB
        spread = f"{min(r['peak'] for r in runs) / MiB:.0f}-{max(r['peak'] for r in runs) / MiB:.0f}"
        baseline = statistics.median(r["baseline"] for r in runs) / MiB
        memory = estimated(root / size, data, adapter)
        parts = ", ".join(f"{name} {value / MiB:.0f}" for name, value in memory.items() if name != "total")
        total = memory["total"] / MiB
        row = f"{size:6} {adapter:10} {baseline:9.0f} {peak:9.0f} {spread:>11}"
        print(row + f" {total:9.0f} {total / peak:8.2f}  {parts}")


if __name__ == "__main__":
    main()
