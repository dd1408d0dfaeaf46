"""/v1/fine_tuning/jobs through the client: create (retry-safe), read, cancel, estimate, wait, download."""

from __future__ import annotations

import builtins
import json
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraq.client.errors import LoraqClientError, WaitTimeout
from loraq.client.files import Files
from loraq.client.http import Http
from loraq.client.objects import Checkpoint, Job, JobEvent, Page, Sample
from loraq.jobs.spec import JobCreate
from loraq.storage.archives import unpack

PATH = "/v1/fine_tuning/jobs"
EVENTS_PAGE = 100

JobRequest = JobCreate | Mapping[str, Any]


@dataclass
class Update:
    """One look at a job while waiting: the job as it is now, and the events that came since the last."""

    job: Job
    new_events: list[JobEvent] = field(default_factory=list)


def request_body(request: JobRequest) -> dict[str, Any]:
    """A create body from a typed JobCreate (only what was set) or a mapping (as is)."""
    if isinstance(request, JobCreate):
        body: dict[str, Any] = request.model_dump(mode="json", exclude_unset=True)
        return body
    return dict(request)


class Jobs:
    def __init__(self, http: Http, files: Files) -> None:
        self._http = http
        self._files = files

    def create(self, request: JobRequest, *, idempotency_key: str | None = None) -> Job:
        """Create and queue a job. One Idempotency-Key for this call, sent on every retry: one job at most."""
        key = idempotency_key or f"loraq-job-{uuid.uuid4()}"
        answer = self._http.post(PATH, request_body(request), replayable=True, idempotency_key=key)
        return Job.model_validate(answer)

    def estimate(self, request: JobRequest) -> dict[str, Any]:
        """Examples, tokens, steps and memory for this request, without queueing it."""
        answer: dict[str, Any] = self._http.post(f"{PATH}/estimate", request_body(request), replayable=True)
        return answer

    def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        status: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page[Job]:
        answer = self._http.get(
            PATH, limit=limit, after=after, status=status, metadata=json.dumps(metadata) if metadata else None
        )
        return Page[Job].model_validate(answer)

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._http.get(f"{PATH}/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        # Not replayable: a second cancel of a cancelled job is a 409, which would hide the first's success.
        return Job.model_validate(self._http.post(f"{PATH}/{job_id}/cancel", replayable=False))

    def events(self, job_id: str, *, limit: int | None = None, after: str | None = None) -> Page[JobEvent]:
        """Newest first, as the API lists them."""
        answer = self._http.get(f"{PATH}/{job_id}/events", limit=limit, after=after)
        return Page[JobEvent].model_validate(answer)

    def checkpoints(
        self, job_id: str, *, limit: int | None = None, after: str | None = None
    ) -> Page[Checkpoint]:
        answer = self._http.get(f"{PATH}/{job_id}/checkpoints", limit=limit, after=after)
        return Page[Checkpoint].model_validate(answer)

    def samples(self, job_id: str, *, limit: int | None = None, after: str | None = None) -> Page[Sample]:
        answer = self._http.get(f"{PATH}/{job_id}/samples", limit=limit, after=after)
        return Page[Sample].model_validate(answer)

    def wait(
        self, job_id: str, *, poll_interval: float = 1.0, timeout: float | None = None
    ) -> Iterator[Update]:
        """Yield an Update each poll until the job has finished (the last Update's job is finished).

        Raises WaitTimeout once `timeout` seconds pass first. Every event is yielded once, oldest first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            job = self.get(job_id)
            yield Update(job=job, new_events=self._new_events(job_id, seen))
            if job.finished:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job_id, timeout or 0)
            pause = poll_interval if deadline is None else min(poll_interval, deadline - time.monotonic())
            time.sleep(max(pause, 0))

    def wait_for(
        self,
        job_id: str,
        *,
        on_update: Callable[[Update], None] | None = None,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> Job:
        """The job once finished; `on_update` sees each Update on the way."""
        last: Job | None = None
        for update in self.wait(job_id, poll_interval=poll_interval, timeout=timeout):
            last = update.job
            if on_update is not None:
                on_update(update)
        assert last is not None  # wait yields at least once
        return last

    def download(self, job_id: str, dest_dir: Path | str) -> Path:
        """Download a succeeded job's adapter bundle, check its sha256, and unpack it safely into dest_dir."""
        job = self.get(job_id)
        if job.status != "succeeded" or not job.result_files:
            raise LoraqClientError(f"job {job_id} is {job.status}: it has no adapter to download")
        bundle = self._adapter_bundle(job)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".loraq-download-", dir=dest) as scratch:
            archive = self._files.download(bundle, Path(scratch) / "bundle.tar.gz")
            try:  # tarfile's "data" filter: no absolute paths, no "..", no links, no devices
                unpack(archive, dest)
            except tarfile.TarError as error:
                raise LoraqClientError(f"job {job_id}: refused to unpack its bundle: {error}") from error
        return dest

    def _adapter_bundle(self, job: Job) -> str:
        """The result file that is the adapter (a merged export is a second result file)."""
        for file_id in job.result_files:
            if self._files.get(file_id).filename.endswith("-adapter.tar.gz"):
                return file_id
        return job.result_files[0]

    def _new_events(self, job_id: str, seen: set[str]) -> builtins.list[JobEvent]:
        """The events not yet seen, oldest first: newest-first pages, back to the first seen one."""
        fresh: builtins.list[JobEvent] = []
        after = None
        while True:
            page = self.events(job_id, limit=EVENTS_PAGE, after=after)
            for event in page.data:
                if event.id in seen:
                    break
                fresh.append(event)
            else:
                if page.has_more and page.data:
                    after = page.data[-1].id
                    continue
            break
        fresh.reverse()
        seen.update(event.id for event in fresh)
        return fresh
