"""`make serve` as a new user runs it: ready means a job can be made; a dead worker is noticed, replaced."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.smollm2_cache import link_smollm2
from tests.stack import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    home: Path
    url: str
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.home / 'admin.key').read_text().strip()}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_main_pids(self) -> list[int]:
        """The `loraq-worker` processes `make serve` started (not Celery's pool children)."""
        pids = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                command = " ".join(child.cmdline())
                parent = " ".join(child.parent().cmdline()) if child.parent() else ""
            except psutil.Error:
                continue
            if "loraq-worker" in command and "loraq-worker" not in parent:
                pids.append(child.pid)
        return pids


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    # Fast heartbeats and leases, so a dead worker is noticed within seconds.
    env.update(
        PORT=str(port),
        LORAQ_HOME=str(home),
        LORAQ_HEARTBEAT_SECONDS="1",
        LORAQ_LEASE_SECONDS="6",
        LORAQ_RECONCILE_SECONDS="2",
    )
    link_smollm2(home / "models")  # converted once per checkout, not by every fresh `make serve`
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        ["make", "serve"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    served = Served(process, home, f"http://127.0.0.1:{port}", log)
    try:
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have stopped it already
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_a_job_can_be_created_as_soon_as_the_api_announces_itself(served: Served) -> None:
    wait_for(lambda: "loraq API on" in served.output() or served.process.poll() is not None, timeout=300)
    assert served.process.poll() is None, served.output()
    wait_for(lambda: _answers(served.url + "/healthz"), timeout=30, what="/healthz")
    # No waiting for a model here: by the time the API speaks, the demo model is listed.
    models = httpx.get(served.url + "/v1/models", headers=served.headers).json()["data"]
    assert "loraq-tiny-demo" in [model["id"] for model in models]
    wait_for(lambda: _answers(served.url + "/readyz"), timeout=60, what="/readyz to say ready")
    ready = httpx.get(served.url + "/readyz").json()
    assert ready["live_workers"] == 1
    # Job counts span every project: Prometheus needs an admin key to read them.
    assert httpx.get(served.url + "/metrics").status_code == 401
    scrape = httpx.get(served.url + "/metrics", headers=served.headers)
    assert 'loraq_jobs{status="queued"} 0.0' in scrape.text


def test_a_killed_worker_is_noticed_and_restarted(served: Served) -> None:
    wait_for(lambda: _answers(served.url + "/readyz"), timeout=300, what="/readyz to say ready")
    [first] = wait_for(served.worker_main_pids, timeout=30, what="the worker process")
    os.kill(first, signal.SIGKILL)

    def seen_dead() -> bool:
        workers = httpx.get(served.url + "/v1/workers", headers=served.headers).json()["data"]
        return any(worker["pid"] == first and not worker["live"] for worker in workers)

    # Noticed: its heartbeats stop, so within a lease it is no longer live. (/readyz says "no live worker"
    # meanwhile only if its replacement has not registered yet, which on a fast host it may have:
    # test_performance checks that answer with no worker at all.)
    wait_for(seen_dead, timeout=30, interval=0.5, what="the API to notice the dead worker")
    # Replaced: make serve restarts it, and the new one registers.
    wait_for(lambda: _answers(served.url + "/readyz"), timeout=120, what="a restarted worker")
    assert first not in served.worker_main_pids()
    workers = httpx.get(served.url + "/v1/workers", headers=served.headers).json()["data"]
    assert [worker["live"] for worker in workers].count(True) == 1
    assert "restarting it" in served.output()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_make_serve_stops_with_all_its_processes_however_it_is_signalled(served: Served) -> None:
    wait_for(lambda: _answers(served.url + "/readyz"), timeout=300, what="/readyz to say ready")
    children = psutil.Process(served.process.pid).children(recursive=True)
    # The whole group at once (a terminal's Ctrl-C, a test's killpg), then the supervisor again at once.
    os.killpg(served.process.pid, signal.SIGINT)
    for child in children:
        if "serve.py" in " ".join(child.cmdline()):
            for _ in range(5):
                os.kill(child.pid, signal.SIGTERM)
    served.process.wait(timeout=90)
    # Nothing left behind: the API, the worker (in its own session) and its pool children are gone.
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]


def test_closing_the_terminal_of_make_serve_leaves_no_process_behind(served: Served) -> None:
    """A closing terminal sends SIGHUP to its foreground process group: make, serve.py and the API. The
    worker, in a session of its own, must be stopped by serve.py, not left running orphaned."""
    wait_for(lambda: _answers(served.url + "/readyz"), timeout=300, what="/readyz to say ready")
    children = psutil.Process(served.process.pid).children(recursive=True)
    assert served.worker_main_pids()
    os.killpg(served.process.pid, signal.SIGHUP)
    served.process.wait(timeout=90)
    _, alive = psutil.wait_procs(children, timeout=60)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
