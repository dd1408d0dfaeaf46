"""A real loraq deployment for tests: the API and a worker as separate processes, spoken to over HTTP."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.helpers import FAST_TIMINGS, FINISHED
from tests.smollm2_cache import link_smollm2

VENV_BIN = Path(sys.executable).parent
# One API process unless a test says otherwise: its children are the API's own, its log the whole API's.
# The default (auto: two processes on a two-core machine) runs in tests/test_serve.py and
# tests/test_packaging.py; tests/test_api_processes.py names two.
ONE_API_PROCESS = {"LORAQ_API_WORKERS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def spawned_children(pid: int) -> list[psutil.Process]:
    """The processes `pid` started with multiprocessing's spawn: the API's serving processes
    (LORAQ_API_WORKERS > 1), the estimating process."""
    return [child for child in psutil.Process(pid).children() if "spawn_main" in " ".join(child.cmdline())]


@dataclass
class Stack:
    """One deployment: its home directory, its environment, and its processes."""

    name: str
    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.home / "admin.key").read_text().strip()

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def _spawn(self, command: str, log_name: str) -> subprocess.Popen[bytes]:
        log = (self.home / log_name).open("ab")
        return subprocess.Popen(
            [str(VENV_BIN / command)],
            env={**os.environ, **ONE_API_PROCESS, **self.env, "PORT": str(self.port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 reaches Celery's children too
        )

    def start_api(self, log_name: str = "api.log") -> None:
        self.api = self._spawn("loraq-api", log_name)

        def healthy() -> bool:
            assert self.api is not None and self.api.poll() is None, self.logs(log_name)
            try:
                return httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, what=f"{self.name} API /healthz")

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn("loraq-worker", f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Kill the worker's whole process group, as a machine dying would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, sig)
        worker.wait(timeout=30)

    def stop(self) -> None:
        # A teardown asserts nothing about a graceful stop (test_supervision does): workers get a few
        # seconds to finish, together, then are killed rather than waited on through a job's last steps.
        running = [worker for worker in self.workers if worker.poll() is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in running:
            try:
                worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill_worker(worker)
        if self.api is not None and self.api.poll() is None:
            os.killpg(self.api.pid, signal.SIGTERM)
            self.api.wait(timeout=30)

    def logs(self, name: str) -> str:
        path = self.home / name
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def all_worker_logs(self) -> str:
        return "\n".join(self.logs(f"worker-{i}.log") for i in range(len(self.workers)))

    def wait_for_job(
        self,
        job_id: str,
        statuses: Collection[str] = FINISHED,
        *,
        timeout: float = 240,
        key: str | None = None,  # the job's project's key; default: the admin key's project
    ) -> dict[str, Any]:
        with self.client(key) as client:

            def reached() -> dict[str, Any] | None:
                job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
                return job if job["status"] in statuses else None

            try:
                return wait_for(
                    reached, timeout=timeout, interval=0.5, what=f"job {job_id} in {sorted(statuses)}"
                )
            except TimeoutError as error:
                raise AssertionError(f"{error}\n--- worker logs ---\n{self.all_worker_logs()}") from error

    def wait_for_success(self, job_id: str, *, timeout: float = 240) -> dict[str, Any]:
        """The job once finished, which must be a success."""
        job = self.wait_for_job(job_id, timeout=timeout)
        assert job["status"] == "succeeded", (job["error"], self.all_worker_logs())
        return job


def start_stack(name: str, home: Path, demo_model: Path, env: dict[str, str]) -> Stack:
    """An API and a worker under `home`, with the demo model and fast leases; env adds or overrides."""
    shutil.copytree(demo_model, home / "models" / demo_model.name)
    link_smollm2(home / "models")  # converted once per checkout, not at every deployment's first start
    stack = Stack(name=name, home=home, env={"LORAQ_HOME": str(home), **FAST_TIMINGS, **env})
    stack.start_api()
    stack.start_worker()
    return stack
