"""`make serve` brings up the embedded default from nothing and answers /healthz; a SIGTERM stops it
cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import psutil

from tests.smollm2_cache import link_smollm2
from tests.stack import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent


def test_make_serve_runs_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    env.update(PORT=str(port), LORAQ_HOME=str(home))
    # The conversion itself is tests/test_smollm2.py's; here it is the cached one, listed like a built one.
    link_smollm2(home / "models")
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        ["make", "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def healthy() -> bool:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=240, what="make serve to answer /healthz")
        key = (home / "admin.key").read_text().strip()
        assert (home / "admin.key").stat().st_mode & 0o077 == 0, "the admin key is private to its owner"
        assert (home / "loraq.db").exists()
        headers = {"Authorization": f"Bearer {key}"}
        wait_for(
            lambda: (home / "models" / "loraq-tiny-demo" / "config.json").exists(),
            timeout=120,
            what="the demo model",
        )
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers).json()["data"]
        assert {"loraq-tiny-demo", "smollm2-135m-instruct"} <= {m["id"] for m in models}
        # Ready once the worker has registered (tests/test_supervision.py times this more closely).
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
            timeout=60,
            what="/readyz with a live worker",
        )
        assert f"http://127.0.0.1:{port}" in (tmp_path / "serve.log").read_text()
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers).text
        assert 'loraq_jobs{status="queued"} 0.0' in scrape
    finally:
        processes = psutil.Process(serve.pid).children(recursive=True)
        supervisor = [p for p in processes if "serve.py" in " ".join(p.cmdline())]
        # What `kill PID` or a service manager sends: SIGTERM to the supervisor alone.
        for process in supervisor:
            process.terminate()
        try:
            code = serve.wait(timeout=60)
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
    assert supervisor, "serve.py ran under make"
    assert code == 0, "a stop on request is a clean exit, not make's 'Error 241'"
    _, alive = psutil.wait_procs(processes, timeout=60)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
