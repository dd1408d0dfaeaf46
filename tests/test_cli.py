"""The `loraq` command, run as the installed executable against a real server on both deployments: jobs
from flags and from a YAML file, progress in a log, every exit code from a real situation, the help, and
docs/ci.md's script exactly as written."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from loraq.base_models.catalog import DEMO_MODEL_NAME
from loraq.cli import run
from loraq.cli.config import ConfigError, Connection, resolve
from loraq.cli.gates import Gates, judge
from loraq.cli.output import cell
from loraq.cli.watch import LiveBar, reporter
from loraq.client import Job, JobEvent, Update
from tests.helpers import (
    FAST_HYPERPARAMETERS,
    chat_dataset,
    create_job,
    job_body,
    job_failing_in_the_worker,
    method,
    slow_dataset,
    upload,
)
from tests.stack import Stack, free_port

LORAQ = Path(sys.executable).parent / "loraq"
REPO = Path(__file__).resolve().parent.parent
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", re.MULTILINE)


def loraq(
    *args: str | Path, stack: Stack | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the executable, its output captured (so stdout is not a terminal), with no config file around."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    base["XDG_CONFIG_HOME"] = str(cwd or REPO / "var" / "no-config")
    if stack is not None:
        base |= {"LORAQ_API_URL": stack.base_url, "LORAQ_API_KEY": stack.admin_key}
    return subprocess.run(
        [str(LORAQ), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=300,
    )


def document(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def datasets(directory: Path) -> tuple[Path, Path]:
    (directory / "data").mkdir(parents=True, exist_ok=True)
    train = directory / "data" / "train.jsonl"
    train.write_bytes(chat_dataset(12))
    valid = directory / "data" / "valid.jsonl"
    valid.write_bytes(chat_dataset(4))
    return train, valid


# --- without a server ---------------------------------------------------------------------------------

COMMANDS = {
    (): ["files", "jobs", "models", "Exit codes"],
    ("files",): ["upload", "list", "get", "download"],
    ("files", "upload"): ["--purpose", "--quiet"],
    ("files", "list"): ["--purpose", "--limit"],
    ("files", "get"): ["file_id"],
    ("files", "download"): ["--output"],
    ("jobs",): ["create", "wait", "list", "get", "events", "checkpoints", "cancel", "estimate", "download"],
    ("jobs", "create"): [
        "--config",
        "--model",
        "--training-file",
        "--validation-file",
        "--type",
        "--r",
        "--alpha",
        "--target-modules",
        "--epochs",
        "--learning-rate",
        "--seed",
        "--suffix",
        "--metadata",
        "--wait",
        "--timeout",
        "--max-valid-loss",
        "--min-improvement",
        "--max-train-loss",
    ],
    ("jobs", "wait"): ["--timeout", "--max-valid-loss", "--min-improvement", "--max-train-loss"],
    ("jobs", "list"): ["--limit", "--status"],
    ("jobs", "get"): ["job_id"],
    ("jobs", "events"): ["--limit"],
    ("jobs", "checkpoints"): ["--limit"],
    ("jobs", "samples"): ["--limit"],
    ("jobs", "cancel"): ["job_id"],
    ("jobs", "estimate"): ["--config", "--model", "--training-file"],
    ("jobs", "download"): ["--output"],
    ("models",): ["list"],
    ("models", "list"): [],
}


def test_every_command_has_clear_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert loraq("--help").returncode == 0  # the executable itself; the rest in this process, faster
    for command, names in COMMANDS.items():
        assert run([*command, "--help"]) == 0, command
        shown = capsys.readouterr().out
        shared = ["--api-url", "--api-key", "--json"] if len(command) == 2 else []
        for name in [*names, *shared]:
            assert name in shown, (command, name, shown)
        # A flag takes no value: a placeholder after it reads as if `--wait true` were the way to write it.
        assert "<bool>" not in shown, (command, shown)


def test_text_output_reads_as_times_sizes_and_pairs_where_json_keeps_raw_values() -> None:
    assert cell(1795576519, "created_at") == cell(1795576519, "created") == "2026-11-25T03:15:19Z"
    assert cell(4055, "bytes") == "4.0 KiB" and cell(512, "bytes") == "512 B"
    memory = {"adapter": 28672, "total": 435161817}
    assert cell(memory, "memory_bytes") == "adapter=28.0 KiB, total=415.0 MiB"
    progress = {"step": 40, "train_loss": 7.3221917, "valid_loss": None, "reported_at": 1795576519.53}
    shown = "step=40, train_loss=7.322, valid_loss=-, reported_at=2026-11-25T03:15:19Z"
    assert cell(progress, "progress") == shown
    assert cell(["file-a", "file-b"], "result_files") == "file-a, file-b"
    assert cell(None) == cell([]) == cell({}) == "-" and cell(False) == "false"
    assert cell(1795576519, "examples") == "1795576519"  # a count, not a time


def test_the_command_line_imports_no_server_or_training_module() -> None:
    probe = (
        "import sys\n"
        "import loraq.cli, loraq.client\n"
        "from loraq.cli.app import app\n"
        "heavy = ('sqlalchemy', 'fastapi', 'celery', 'torch', 'transformers', 'api', 'worker', 'boto3')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_an_unreachable_server_exits_4_and_the_key_is_never_printed(tmp_path: Path) -> None:
    secret = "sk-very-secret-key-1234"
    url = f"http://127.0.0.1:{free_port()}"
    result = loraq("jobs", "list", "--api-url", url, "--api-key", secret, "--json", cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert document(result)["error"]["type"] == "unreachable"
    assert secret not in result.stdout + result.stderr


def test_flags_win_over_the_environment_which_wins_over_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('api_url = "http://file:1"\napi_key = "from-file"\n')
    env = {"LORAQ_CONFIG": str(config)}
    assert resolve(None, None, env) == Connection("http://file:1", "from-file")
    env |= {"LORAQ_API_URL": "http://env:2", "LORAQ_API_KEY": "from-env"}
    assert resolve(None, None, env) == Connection("http://env:2", "from-env")
    assert resolve("http://flag:3", "from-flag", env) == Connection("http://flag:3", "from-flag")
    assert "from-flag" not in repr(resolve("http://flag:3", "from-flag", env))
    config.write_text('api_token = "x"\n')
    with pytest.raises(ConfigError, match="api_token"):
        resolve(None, None, env)


def test_no_key_or_a_bad_flag_is_an_invalid_request(tmp_path: Path) -> None:
    result = loraq("jobs", "list", cwd=tmp_path)
    assert result.returncode == 3 and "no API key" in result.stderr
    assert loraq("jobs", "list", "--bogus", cwd=tmp_path).returncode == 3


# --- against a server ---------------------------------------------------------------------------------


def test_create_from_flags_waits_with_progress_lines_then_downloads(stack: Stack, tmp_path: Path) -> None:
    datasets(tmp_path)
    # Local paths: uploaded first. stdout is a pipe, so progress comes as timestamped lines.
    result = loraq(
        "jobs", "create", "--model", DEMO_MODEL_NAME,
        "--training-file", "data/train.jsonl", "--validation-file", "data/valid.jsonl",
        "--type", "lora", "--r", "4", "--alpha", "8", "--target-modules", "q_proj,v_proj",
        "--epochs", "1", "--batch-size", "4", "--learning-rate", "0.005", "--seed", "3", "--suffix", "cli",
        "--metadata", "run=flags", "--metadata", "team=ci",
        "--wait", "--poll-interval", "0.5", "--max-valid-loss", "1000", "--max-train-loss", "1000",
        stack=stack, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout
    assert TIMESTAMPED.search(lines), lines
    assert re.search(r"step \d+/\d+, train_loss \d", lines), lines  # progress lines
    assert "Step 1: " in lines  # the metrics events, streamed
    assert "max_valid_loss: passed: final valid loss" in lines and "max_train_loss: passed" in lines
    [job_id] = re.findall(r"job (ftjob-\w+) succeeded: ft:", lines)

    job = document(loraq("jobs", "get", job_id, "--json", stack=stack))
    shown = loraq("jobs", "get", job_id, stack=stack).stdout  # for a person: times in UTC, objects as pairs
    assert re.search(r"^created_at: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", shown, re.MULTILINE), shown
    assert re.search(r"^progress: step=\d+, total_steps=\d+, ", shown, re.MULTILINE), shown
    assert "run=flags, team=ci" in shown and "{" not in shown, shown
    assert job["adapter"]["r"] == 4 and job["adapter"]["target_modules"] == ["q_proj", "v_proj"]
    assert job["hyperparameters"]["n_epochs"] == 1 and job["seed"] == 3
    assert job["metadata"] == {"run": "flags", "team": "ci"}

    downloaded = loraq("jobs", "download", job_id, "-o", tmp_path / "adapter", "--json", stack=stack)
    assert downloaded.returncode == 0, downloaded.stderr
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(document(downloaded)["files"])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    events = document(loraq("jobs", "events", job_id, "--limit", "5", "--json", stack=stack))
    assert len(events) == 5
    checkpoints = loraq("jobs", "checkpoints", job_id, stack=stack)
    assert checkpoints.returncode == 0 and "ftckpt" in checkpoints.stdout
    listed = document(loraq("jobs", "list", "--status", "succeeded", "--json", stack=stack))
    assert job_id in {j["id"] for j in listed}
    models = document(loraq("models", "list", "--json", stack=stack))
    assert {DEMO_MODEL_NAME, job["fine_tuned_model"]} <= {m["id"] for m in models}

    # The same finished job, gated again: a loss no job reaches fails with 5, and says why with the numbers.
    gated = loraq("jobs", "wait", job_id, "--max-valid-loss", "0.000001", "--json", stack=stack)
    assert gated.returncode == 5, gated.stdout + gated.stderr
    [verdict] = document(gated)["quality_gates"]
    assert verdict["gate"] == "max_valid_loss" and not verdict["passed"] and verdict["value"] > 0.000001
    assert "max_valid_loss: failed: final valid loss" in gated.stderr
    # Against the base model's loss on the same validation data: some improvement, not a thousandfold one.
    improved = loraq("jobs", "wait", job_id, "--min-improvement", "0.01", "--json", stack=stack)
    assert improved.returncode == 0, improved.stdout + improved.stderr
    [verdict] = document(improved)["quality_gates"]
    assert verdict["passed"] and verdict["value"] > 0.01 and "below the base model's" in verdict["message"]
    improvement = loraq("jobs", "wait", job_id, "--min-improvement", "1000", stack=stack)
    assert improvement.returncode == 5 and "min_improvement: failed" in improvement.stdout


JOB_YAML = """
base_model: {model}
datasets:
  - path: data/train.jsonl
    type: chat_template
val_set_size: 0.25
adapter: lora
lora_r: 4
lora_alpha: 8
lora_dropout: 0.0
lora_target_modules: [q_proj, v_proj]
num_epochs: 1
micro_batch_size: 4
learning_rate: 5e-3
sequence_len: 64
sample_packing: false
seed: 5
metadata:
  run: yaml
"""


def test_create_from_yaml_maps_axolotl_keys(stack: Stack, tmp_path: Path) -> None:
    datasets(tmp_path)
    (tmp_path / "job.yaml").write_text(JOB_YAML.format(model=DEMO_MODEL_NAME))
    stored = {f["id"] for f in document(loraq("files", "list", "--json", stack=stack))}
    estimate = loraq("jobs", "estimate", "--config", "job.yaml", "--json", stack=stack, cwd=tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    assert document(estimate)["train_examples"] == 9  # 12 less the 25% validation split
    shown = loraq("jobs", "estimate", "--config", "job.yaml", stack=stack, cwd=tmp_path).stdout
    sizes = r"^memory_bytes: base_weights=[\d.]+ (KiB|MiB), .*total=[\d.]+ (MiB|GiB)$"
    assert re.search(sizes, shown, re.MULTILINE), shown
    assert "{" not in shown and "None" not in shown, shown
    # The dataset uploaded to estimate it is deleted after: an estimate stores nothing.
    assert {f["id"] for f in document(loraq("files", "list", "--json", stack=stack))} == stored

    flags = ("--config", "job.yaml", "--epochs", "2", "--json")
    created = loraq("jobs", "create", *flags, stack=stack, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    job = document(created)
    hp = job["hyperparameters"]
    # --epochs beside --config wins over num_epochs.
    assert (hp["validation_split"], hp["n_epochs"], hp["batch_size"], hp["max_seq_len"]) == (0.25, 2, 4, 64)
    assert hp["learning_rate"] == 5e-3 and hp["packing"] is False and job["seed"] == 5
    adapter = job["adapter"]
    assert (adapter["type"], adapter["r"], adapter["alpha"], adapter["dropout"]) == ("lora", 4, 8, 0.0)
    assert adapter["target_modules"] == ["q_proj", "v_proj"] and job["metadata"] == {"run": "yaml"}
    assert loraq("jobs", "cancel", job["id"], stack=stack).returncode == 0
    assert loraq("jobs", "wait", job["id"], stack=stack).returncode == 2


def test_invalid_specs_exit_3_naming_the_problem(stack: Stack, tmp_path: Path) -> None:
    train, _ = datasets(tmp_path)
    uploaded = loraq("files", "upload", train, "--quiet", stack=stack)
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = uploaded.stdout.strip()
    shown = document(loraq("files", "get", file_id, "--json", stack=stack))
    assert shown["examples"] == 12 and len(shown["sha256"]) == 64
    assert file_id in {f["id"] for f in document(loraq("files", "list", "--json", stack=stack))}
    copy = tmp_path / "copy.jsonl"
    assert loraq("files", "download", file_id, "-o", copy, stack=stack).returncode == 0
    assert copy.read_bytes() == train.read_bytes()

    rejected = loraq(
        "jobs", "create", "--model", DEMO_MODEL_NAME, "--training-file", file_id, "--r", "0", "--json",
        stack=stack,
    )  # fmt: skip
    assert rejected.returncode == 3, rejected.stdout + rejected.stderr
    assert document(rejected)["error"]["param"] == "adapter.r"
    assert "adapter.r" in rejected.stderr

    (tmp_path / "job.yaml").write_text(f"base_model: {DEMO_MODEL_NAME}\nlora_rank: 4\n")
    unknown = loraq("jobs", "create", "--config", tmp_path / "job.yaml", stack=stack)
    assert unknown.returncode == 3 and "'lora_rank'" in unknown.stderr
    missing = loraq("jobs", "create", "--model", DEMO_MODEL_NAME, "--training-file", "a/b.jsonl", stack=stack)
    assert missing.returncode == 3 and "no such file" in missing.stderr

    # A create the server refuses deletes the dataset the command uploaded for it: a CI job that retries
    # a typo must not store its data again each time.
    stored = {f["id"] for f in document(loraq("files", "list", "--json", stack=stack))}
    for flags, named in (
        (["--model", "no-such-model"], "param: model"),
        (["--model", DEMO_MODEL_NAME, "--epochs", "0"], "param: method.supervised.hyperparameters.n_epochs"),
    ):
        refused = loraq("jobs", "create", *flags, "--training-file", train, stack=stack)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert named in refused.stderr, refused.stderr
    assert {f["id"] for f in document(loraq("files", "list", "--json", stack=stack))} == stored
    assert loraq("jobs", "get", "ftjob-doesnotexist", stack=stack).returncode == 3


def test_a_job_failing_in_the_worker_exits_1(stack: Stack) -> None:
    with stack.client() as client:
        job = job_failing_in_the_worker(client)
    result = loraq("jobs", "wait", job["id"], "--poll-interval", "0.5", stack=stack)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"job {job['id']} failed: " in result.stdout


def test_a_timeout_exits_4_and_a_cancel_from_another_process_exits_2(stack: Stack) -> None:
    with stack.client() as client:
        body = job_body(
            upload(client, slow_dataset(16))["id"],
            adapter={"type": "lora", "r": 4},
            method=method(**{**FAST_HYPERPARAMETERS, "n_epochs": 50, "batch_size": 1, "max_seq_len": 256}),
        )
        job = create_job(client, body)
    timed_out = loraq("jobs", "wait", job["id"], "--timeout", "1", "--poll-interval", "0.2", stack=stack)
    assert timed_out.returncode == 4, timed_out.stdout + timed_out.stderr
    assert "did not finish within 1 s" in timed_out.stderr

    env = {**os.environ, "LORAQ_API_URL": stack.base_url, "LORAQ_API_KEY": stack.admin_key}
    waiter = subprocess.Popen(
        [str(LORAQ), "jobs", "wait", job["id"], "--poll-interval", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        time.sleep(1)
        cancelled = loraq("jobs", "cancel", job["id"], stack=stack)
        assert cancelled.returncode == 0, cancelled.stderr
        out, err = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 2, out + err
    assert f"job {job['id']} cancelled" in out
    assert stack.wait_for_job(job["id"])["status"] == "cancelled"


# --- docs/ci.md ---------------------------------------------------------------------------------------


def ci_blocks() -> dict[str, str]:
    """docs/ci.md's fenced blocks that follow a `<!-- ci:NAME -->` marker, by NAME."""
    text = (REPO / "docs" / "ci.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- ci:([\w.]+) -->\n```\w*\n(.*?)```", text, re.DOTALL))


# The pipelines' script once: the deployments' differences are covered by the create and wait tests above.
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_the_ci_pipelines_run_the_documented_script(stack: Stack, tmp_path: Path) -> None:
    blocks = ci_blocks()
    github, gitlab = yaml.safe_load(blocks["github"]), yaml.safe_load(blocks["gitlab"])
    [train] = github["jobs"].values()
    assert train["env"]["LORAQ_API_KEY"] == "${{ secrets.LORAQ_API_KEY }}"
    assert {"run": "sh ci/train.sh"} in train["steps"]
    assert any(step.get("with", {}).get("path") == "adapter/" for step in train["steps"])
    assert "sh ci/train.sh" in gitlab["fine-tune"]["script"]
    assert gitlab["fine-tune"]["artifacts"]["paths"] == ["adapter/"]

    # The script and job file as written; only the base model is the test server's.
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "train.sh").write_text(blocks["train.sh"])
    job_yaml = yaml.safe_load(blocks["job.yaml"])
    (tmp_path / "ci" / "job.yaml").write_text(yaml.safe_dump({**job_yaml, "base_model": DEMO_MODEL_NAME}))
    datasets(tmp_path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")},
        "PATH": f"{LORAQ.parent}{os.pathsep}{os.environ['PATH']}",
        "LORAQ_API_URL": stack.base_url,
        "LORAQ_API_KEY": stack.admin_key,
        "MAX_VALID_LOSS": "1000",
    }
    result = subprocess.run(
        ["sh", "ci/train.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max_valid_loss: passed" in result.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name", ["job.yaml", "train.sh", "github", "gitlab"])
def test_docs_ci_has_each_block(name: str) -> None:
    assert ci_blocks()[name].strip()


def test_a_terminal_gets_a_live_progress_bar() -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=160)
    job = {"id": "ftjob-1", "model": "m", "created_at": 1, "training_file": "file-1"}
    running = {"step": 2, "total_steps": 4, "train_loss": 1.5, "tokens_per_second": 300, "eta_seconds": 75}
    with reporter(terminal) as show:
        assert isinstance(show, LiveBar)
        event = JobEvent(id="e1", created_at=1, level="info", message="hi")
        show(Update(Job(**job, status="queued"), [event]))
        show(Update(Job(**job, status="running", progress=running)))
        finished = {"step": 4, "total_steps": 4, "train_loss": 1.2, "valid_loss": 1.3}
        show(Update(Job(**job, status="succeeded", progress=finished)))
    shown = screen.getvalue()
    assert "hi" in shown and "2/4" in shown and "300 tok/s" in shown and "ETA 1m15s" in shown
    assert "4/4" in shown and "train 1.2000 valid 1.3000" in shown


def test_a_gate_without_its_number_fails_and_says_why() -> None:
    job = Job(id="ftjob-1", model="m", status="succeeded", created_at=1, training_file="file-1")
    verdicts = judge(Gates(max_valid_loss=2, min_improvement=10, max_train_loss=2), job, [])
    assert [v.passed for v in verdicts] == [False, False, False]
    assert "no validation loss" in verdicts[0].message and "no evaluation" in verdicts[1].message
    data = {"train_loss": 1.5}
    metrics = JobEvent(id="e1", created_at=1, level="info", message="", type="metrics", data=data)
    [train] = judge(Gates(max_train_loss=2), job, [metrics])
    assert train.passed and train.value == 1.5
