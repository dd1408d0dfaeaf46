"""Estimates computed in a process of their own, cached: the API never holds the GIL to tokenize a file.

One spawned process, started on the first estimate, tokenizes (chat templates are rendered in Python);
the API's thread only waits for it. Answers are cached in each API process per (file content, model,
spec, device), and an estimate still running when its caller gives up lands in the cache for the retry (a
retry that reaches the API's other process estimates again: a few seconds, sampled).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraq.core.errors import InvalidRequest, ServiceUnavailable
from loraq.core.processes import stop_with_parent
from loraq.jobs import estimate
from loraq.jobs.spec import JobCreate
from loraq.tokens.chat_template import ChatTemplateError

# Past this many examples a file is estimated from an even sample of them: about 1-2 s of tokenizing.
SAMPLE_EXAMPLES = 1000
# The longest a request waits for its estimate; the estimate goes on, and a retry finds it cached.
WAIT_SECONDS = 30.0
# Estimates waiting at once; more are refused (503) rather than holding threads and connections.
MAX_WAITING = 2
CACHE_SIZE = 256


@dataclass(frozen=True)
class EstimateInput:
    """Everything the estimating process needs: plain data, so it pickles."""

    request: JobCreate
    train_path: Path
    dataset_format: str
    model_dir: Path
    device: str
    auto_compute_dtype: str
    validation_file_examples: int | None
    examples: int | None


def compute(job: EstimateInput) -> dict[str, Any]:
    """In the estimating process: the estimate, sampled for a large file."""
    return estimate.estimate_job(
        request=job.request,
        train_path=job.train_path,
        dataset_format=job.dataset_format,
        model_dir=job.model_dir,
        device=job.device,
        auto_compute_dtype=job.auto_compute_dtype,
        validation_file_examples=job.validation_file_examples,
        examples=job.examples,
        sample_examples=SAMPLE_EXAMPLES,
    )


_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None
_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
_running: dict[str, Future[dict[str, Any]]] = {}
_waiting = threading.BoundedSemaphore(MAX_WAITING)


def cached(key: str) -> dict[str, Any] | None:
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    return None


def run_estimate(key: str, job: EstimateInput, *, wait_seconds: float = WAIT_SECONDS) -> dict[str, Any]:
    """The estimate for key, from the cache or from the estimating process."""
    if (answer := cached(key)) is not None:
        return answer
    if not _waiting.acquire(timeout=1):
        raise ServiceUnavailable("the estimator is busy with other estimates; retry shortly")
    try:
        future = _submit(key, job)
        try:
            return future.result(timeout=wait_seconds)
        except TimeoutError:
            raise ServiceUnavailable(
                f"this estimate takes longer than {wait_seconds:.0f} s; it goes on: retry shortly"
            ) from None
        except ChatTemplateError as error:
            raise InvalidRequest(
                f"training_file: the model's chat template refuses an example: {error}", param="training_file"
            ) from error
        except BrokenProcessPool:
            _discard_executor()
            raise ServiceUnavailable("the estimating process died; retry shortly") from None
    finally:
        _waiting.release()


def _start_estimating(api_process: int) -> None:
    """In the estimating process, first: it yields the CPU, as background work, so that on a busy machine
    the API's requests run first (on 2 cores a GET's p99 otherwise grows while a large file is estimated);
    and it stops with the API process, which may die without telling it (uvicorn ends with SIGTERM)."""
    os.nice(10)
    stop_with_parent(api_process, name="the estimating process")


def _submit(key: str, job: EstimateInput) -> Future[dict[str, Any]]:
    global _executor
    with _lock:
        if key in _running:  # the same estimate, asked again while it runs
            return _running[key]
        if _executor is None:
            # spawn: no copy of the API's threads and locks, and torch-free like the API.
            _executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_estimating,
                initargs=(os.getpid(),),
            )
        future = _executor.submit(compute, job)
        _running[key] = future
    future.add_done_callback(lambda done: _finished(key, done))
    return future


def _finished(key: str, future: Future[dict[str, Any]]) -> None:
    with _lock:
        _running.pop(key, None)
        if future.cancelled() or future.exception() is not None:
            return
        _cache[key] = future.result()
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def _discard_executor() -> None:
    global _executor
    with _lock:
        if _executor is not None:
            _executor.shutdown(wait=False, cancel_futures=True)
        _executor = None


def shutdown_estimator() -> None:
    """Stop the estimating process with the API."""
    _discard_executor()
