"""`loraq jobs`: create (from flags or an axolotl-style YAML), follow, gate, inspect, cancel, download."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer

from loraq.cli.common import with_output
from loraq.cli.exits import JOB_STATUS_EXITS, ExitCode
from loraq.cli.gates import Gates, judge, verdicts_json, with_gates
from loraq.cli.jobspec import SpecFlags, upload_local_files
from loraq.cli.options import shared_options
from loraq.cli.output import Output
from loraq.cli.watch import reporter
from loraq.client import Client, InvalidRequestError, Job, LoraqClientError

app = typer.Typer(
    help="Fine-tuning jobs: create, follow, gate, inspect, cancel, download.", no_args_is_help=True
)

JobId = Annotated[str, typer.Argument(help="The job's id (ftjob-...).", show_default=False)]
Limit = Annotated[int | None, typer.Option(help="At most this many, newest first.", show_default=False)]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the job's id on stdout; progress goes to stderr.")
]
JOB_FIELDS = (
    "id",
    "status",
    "model",
    "training_file",
    "validation_file",
    "fine_tuned_model",
    "trained_tokens",
    "result_files",
    "progress",
    "evaluation",
    "error",
    "status_details",
    "metadata",
    "created_at",
    "finished_at",
)
JOB_COLUMNS = ("id", "status", "model", "fine_tuned_model", "created_at")


def _flag(kind: Any, help: str, *names: str) -> tuple[Any, None]:
    return Annotated[kind | None, typer.Option(*names, help=help, show_default=False)], None


with_spec = shared_options(
    "spec",
    {
        "config": _flag(Path, "A job YAML with axolotl's key names (base_model, datasets, ...).", "--config"),
        "model": _flag(str, "The base model (or an ft: model to train further).", "--model"),
        "training_file": _flag(str, "A file id, or a local JSONL file to upload.", "--training-file"),
        "validation_file": _flag(str, "A file id, or a local JSONL file to upload.", "--validation-file"),
        "type": _flag(str, "The adapter: lora or qlora.", "--type"),
        "r": _flag(int, "LoRA rank.", "--r"),
        "alpha": _flag(float, "LoRA alpha.", "--alpha"),
        "target_modules": _flag(str, "Comma-separated module names, or all-linear.", "--target-modules"),
        "epochs": _flag(int, "Epochs (n_epochs).", "--epochs"),
        "batch_size": _flag(int, "Batch size.", "--batch-size"),
        "learning_rate": _flag(float, "Absolute learning rate.", "--learning-rate"),
        "seed": _flag(int, "Seed.", "--seed"),
        "suffix": _flag(str, "Suffix of the fine-tuned model's name.", "--suffix"),
        "metadata": (
            Annotated[list[str] | None, typer.Option(help="key=value; repeat for more.", show_default=False)],
            None,
        ),
    },
    lambda metadata, **flags: SpecFlags(metadata=metadata or [], **flags),
)

Timeout = Annotated[
    float | None,
    typer.Option(help="Stop waiting after this many seconds (exit 4); the job goes on.", show_default=False),
]
PollInterval = Annotated[float, typer.Option(help="Seconds between looks at the job.")]


@contextmanager
def _with_datasets(client: Client, spec: SpecFlags, *, keep: bool) -> Iterator[dict[str, Any]]:
    """The spec's request body, its local datasets uploaded for it. What this command uploaded is deleted
    again when the server refuses the request (a 4xx), and after it when `keep` is false (an estimate): a
    CI job retried with a typo, or a spec estimated over and over, must not store its data each time. After
    any other failure it stays: a create whose answer was lost may have made a job that needs it."""
    uploaded: list[str] = []

    def upload(path: Path) -> str:
        uploaded.append(client.files.upload(path).id)
        return uploaded[-1]

    try:
        yield upload_local_files(spec.draft(), upload)
    except InvalidRequestError:
        # Best effort: the refusal is what the command reports (exit 3), not a failed clean-up.
        with suppress(LoraqClientError):
            _delete_files(client, uploaded)
        raise
    if not keep:
        _delete_files(client, uploaded)


def _delete_files(client: Client, file_ids: list[str]) -> None:
    for file_id in file_ids:
        client.files.delete(file_id)


@app.command()
@with_output
@with_gates
@with_spec
def create(
    output: Output,
    spec: SpecFlags,
    gates: Gates,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job; exit by its outcome.")] = False,
    timeout: Timeout = None,
    poll_interval: PollInterval = 2.0,
    quiet: Quiet = False,
) -> int:
    """Create a job from flags or --config job.yaml (flags win); local datasets are uploaded first.

    A retry after a lost answer sends the same Idempotency-Key: it never makes a second job.
    """
    with output.client() as client:
        with _with_datasets(client, spec, keep=True) as body:
            job = client.jobs.create(body)
        if quiet and not output.json:  # the id at once: a CI step has it even if the wait fails
            output.out.print(job.id)
        if not wait:
            if output.json:
                output.document(job)
            elif not quiet:
                output.out.print(f"created {job.id} ({job.status})", highlight=False)
            return ExitCode.SUCCEEDED
        return _follow(output, client, job.id, gates, timeout=timeout, poll=poll_interval, quiet=quiet)


@app.command()
@with_output
@with_gates
def wait(
    output: Output,
    gates: Gates,
    job_id: JobId,
    timeout: Timeout = None,
    poll_interval: PollInterval = 2.0,
    quiet: Quiet = False,
) -> int:
    """Follow a job until it finishes: exit 0 succeeded, 1 failed, 2 cancelled, 5 a gate not met."""
    with output.client() as client:
        return _follow(output, client, job_id, gates, timeout=timeout, poll=poll_interval, quiet=quiet)


def _follow(
    output: Output,
    client: Client,
    job_id: str,
    gates: Gates,
    *,
    timeout: float | None,
    poll: float,
    quiet: bool,
) -> int:
    with reporter(output.err if output.json or quiet else output.out) as show:
        job = client.jobs.wait_for(job_id, on_update=show, timeout=timeout, poll_interval=poll)
    return _conclude(output, client, job, gates, quiet=quiet)


def _conclude(output: Output, client: Client, job: Job, gates: Gates, *, quiet: bool) -> int:
    """The exit code of a finished job, with the gates' verdicts printed (and in --json)."""
    code = JOB_STATUS_EXITS.get(job.status, ExitCode.FAILED)
    verdicts = []
    if gates.any and job.status == "succeeded":
        verdicts = judge(gates, job, client.jobs.events(job.id, limit=100).data)
        if not all(verdict.passed for verdict in verdicts):
            code = ExitCode.GATE_NOT_MET
    if output.json:
        gated = {"quality_gates": verdicts_json(verdicts)} if gates.any else {}
        output.document({**job.model_dump(mode="json"), **gated})
    console = output.err if output.json or quiet else output.out
    summary = f"job {job.id} {job.status}"
    if job.error is not None:
        summary += f": {job.error.code}: {job.error.message}"
    elif job.fine_tuned_model:
        summary += f": {job.fine_tuned_model}"
    console.print(summary, highlight=False, markup=False)
    if gates.any and job.status != "succeeded":
        console.print("quality gates not checked: the job did not succeed", highlight=False)
    for verdict in verdicts:
        style = None if verdict.passed else "bold red"
        console.print(verdict.message, style=style, highlight=False, markup=False)
    return code


@app.command()
@with_output
@with_spec
def estimate(output: Output, spec: SpecFlags) -> None:
    """Examples, tokens, steps and peak memory for this spec, without queueing a job."""
    with output.client() as client, _with_datasets(client, spec, keep=False) as body:
        answer = client.jobs.estimate(body)
    if output.json:
        output.document(answer)
        return
    output.item(answer)


@app.command("list")
@with_output
def list_jobs(
    output: Output,
    limit: Limit = None,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.", show_default=False)] = None,
) -> None:
    """List this project's jobs, newest first."""
    with output.client() as client:
        output.table(client.jobs.list(limit=limit, status=status).data, JOB_COLUMNS)


@app.command()
@with_output
def get(output: Output, job_id: JobId) -> None:
    """Show one job: status, progress, evaluation, error, result files."""
    with output.client() as client:
        output.item(client.jobs.get(job_id), JOB_FIELDS)


@app.command()
@with_output
def events(output: Output, job_id: JobId, limit: Limit = None) -> None:
    """A job's events, newest first."""
    with output.client() as client:
        output.table(client.jobs.events(job_id, limit=limit).data, ("created_at", "level", "type", "message"))


@app.command()
@with_output
def checkpoints(output: Output, job_id: JobId, limit: Limit = None) -> None:
    """A job's checkpoints: step, metrics, and the adapter bundle of each."""
    with output.client() as client:
        page = client.jobs.checkpoints(job_id, limit=limit)
    output.table(page.data, ("id", "step_number", "metrics", "result_file"))


@app.command()
@with_output
def samples(output: Output, job_id: JobId, limit: Limit = None) -> None:
    """A job's sample generations: base model vs tuned adapter on the spec's samples."""
    with output.client() as client:
        page = client.jobs.samples(job_id, limit=limit)
    output.table(page.data, ("step", "index", "input", "base_output", "output"))


@app.command()
@with_output
def cancel(output: Output, job_id: JobId) -> None:
    """Cancel a queued or running job (its worker stops at the next step)."""
    with output.client() as client:
        job = client.jobs.cancel(job_id)
    if output.json:
        output.document(job)
    else:
        output.out.print(f"job {job.id} {job.status}", highlight=False)


@app.command()
@with_output
def download(
    output: Output,
    job_id: JobId,
    out: Annotated[Path, typer.Option("--output", "-o", help="Directory to unpack to.")] = Path("adapter"),
) -> None:
    """Download a succeeded job's adapter bundle, check its sha256, and unpack it safely into a directory."""
    with output.client() as client:
        dest = client.jobs.download(job_id, out)
    files = sorted(path.relative_to(dest).as_posix() for path in dest.rglob("*") if path.is_file())
    if output.json:
        output.document({"id": job_id, "path": str(dest), "files": files})
    else:
        output.out.print(f"{job_id} -> {dest}/ ({len(files)} files)", highlight=False)
