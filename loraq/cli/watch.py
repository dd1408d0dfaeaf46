"""Showing a job while it runs: a live progress bar on a terminal, timestamped lines in a CI log."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from loraq.cli.output import timestamp
from loraq.client import Job, JobEvent, Update


def describe(job: Job) -> str:
    """The job's progress in one line: step/total, losses, speed, time left."""
    progress = job.progress
    if progress is None or progress.step is None:
        return f"job {job.id} {job.status}"
    parts = [f"job {job.id} {job.status} step {progress.step}/{progress.total_steps or '?'}"]
    for name, value in (("train_loss", progress.train_loss), ("valid_loss", progress.valid_loss)):
        if value is not None:
            parts.append(f"{name} {value:.4f}")
    if progress.tokens_per_second is not None:
        parts.append(f"{progress.tokens_per_second:.0f} tokens/s")
    if progress.eta_seconds is not None:
        parts.append(f"eta {_duration(progress.eta_seconds)}")
    return ", ".join(parts)


def event_line(event: JobEvent) -> str:
    return f"{timestamp(event.created_at)} {event.level:<5} {event.message}"


class LogLines:
    """For a log: a line for each new event, and one whenever the job's state or step changes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last = ""

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def __call__(self, update: Update) -> None:
        for event in update.new_events:
            self.console.print(event_line(event), highlight=False, markup=False)
        line = describe(update.job)
        if line != self.last:
            self.console.print(f"{timestamp()} {line}", highlight=False, markup=False)
            self.last = line


class LiveBar:
    """For a terminal: a rich progress bar (step/total, losses, tokens/s, ETA), events printed above it."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"),
            TextColumn("{task.fields[speed]}"),
            TextColumn("{task.fields[eta]}"),
            console=console,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> LiveBar:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.progress.stop()

    def __call__(self, update: Update) -> None:
        for event in update.new_events:
            self.progress.console.print(event_line(event), highlight=False, markup=False)
        job, progress = update.job, update.job.progress
        fields: dict[str, Any] = {"losses": "", "speed": "", "eta": ""}
        if progress is not None:
            fields["losses"] = " ".join(
                f"{name} {value:.4f}"
                for name, value in (("train", progress.train_loss), ("valid", progress.valid_loss))
                if value is not None
            )
            if progress.tokens_per_second is not None:
                fields["speed"] = f"{progress.tokens_per_second:.0f} tok/s"
            if progress.eta_seconds is not None and not job.finished:
                fields["eta"] = f"ETA {_duration(progress.eta_seconds)}"
        total = progress.total_steps if progress else None
        step = progress.step if progress and progress.step is not None else 0
        description = f"{job.id} {job.status}"
        if self.task is None:
            self.task = self.progress.add_task(description, total=total, completed=step, **fields)
        else:
            self.progress.update(self.task, description=description, total=total, completed=step, **fields)
        self.progress.refresh()  # show each poll's news now, not at the next tick


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def reporter(console: Console) -> LogLines | LiveBar:
    return LiveBar(console) if console.is_terminal else LogLines(console)
