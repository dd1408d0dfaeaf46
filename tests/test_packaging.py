"""A built wheel is a working service: installed (not editable) into a fresh environment and run outside
the checkout, its `loraq-migrate`, `loraq-api` and `loraq-worker` migrate, serve and train a job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    FAST_HYPERPARAMETERS,
    FAST_TIMINGS,
    chat_dataset,
    create_job,
    job_body,
    method,
    upload,
)
from tests.smollm2_cache import link_smollm2
from tests.stack import Stack, wait_for

REPO = Path(__file__).resolve().parent.parent
# Top-level entries of a checkout that are not the project's source: environments, caches, local data.
NOT_SOURCE = {
    ".git",
    ".venv",
    "var",
    "build",
    "dist",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
}


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def copy_source(dest: Path) -> Path:
    """The checkout without what a fresh clone lacks, so the build sees only the project's files."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = NOT_SOURCE if Path(directory) == REPO else set()
        return {n for n in names if n in skip or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@dataclass
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # outside the checkout: nothing there is importable

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        return {**env, "LORAQ_HOME": str(home), **FAST_TIMINGS}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from this checkout, alone in a fresh environment that borrows the test one's
    dependencies (no download): only the wheel's own files can provide loraq, api and worker."""
    work = tmp_path_factory.mktemp("packaging")
    source = copy_source(work / "source")
    dist = work / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source)
    [wheel] = dist.glob("loraq-*.whl")

    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel)
    # Added after the wheel is installed, so pip never sees the test environment's editable loraq. A plain
    # path line puts the directory on sys.path behind the venv's own and runs none of its .pth files, so
    # the editable install's import hook stays off.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "loraq-test-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(dependencies)))

    workdir = work / "run"
    workdir.mkdir()
    return Installed(wheel=wheel, venv=venv, workdir=workdir)


def test_the_wheel_carries_the_dashboard_and_the_migrations(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    # Every file the dashboard loads, so a wheel's dashboard works as the checkout's does.
    in_checkout_static = {
        p.relative_to(REPO).as_posix() for p in (REPO / "api/static").rglob("*") if p.is_file()
    }
    assert "api/static/dashboard.html" in in_checkout_static and in_checkout_static <= names
    assert {"loraq/migrations/env.py", "loraq/migrations/script.py.mako"} <= names
    in_checkout = {p.relative_to(REPO).as_posix() for p in (REPO / "loraq/migrations/versions").glob("*.py")}
    assert in_checkout and in_checkout <= names
    for script in ("loraq-api", "loraq-worker", "loraq-migrate", "loraq"):
        assert f"{script} = " in scripts


@dataclass
class InstalledStack(Stack):
    """A Stack whose processes are the installed wheel's console scripts, started outside the checkout."""

    installed: Installed | None = None

    def _spawn(self, command: str, log_name: str) -> subprocess.Popen[bytes]:
        assert self.installed is not None
        with (self.home / log_name).open("ab") as log:
            return subprocess.Popen(
                [str(self.installed.bin / command)],
                cwd=self.installed.workdir,
                env={**self.installed.env(self.home), **self.env, "PORT": str(self.port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


@pytest.fixture
def installed_stack(installed: Installed, tmp_path: Path) -> Iterator[InstalledStack]:
    (tmp_path / "home").mkdir()
    link_smollm2(tmp_path / "home" / "models")  # converted once per checkout; the demo model is built here
    stack = InstalledStack(name="installed", home=tmp_path / "home", env={}, installed=installed)
    try:
        yield stack
    finally:
        stack.stop()


def test_the_installed_package_migrates_serves_and_trains(
    installed: Installed, installed_stack: InstalledStack
) -> None:
    probe = "import api, loraq, worker; print('\\n'.join(m.__file__ for m in (api, loraq, worker)))"
    modules = run(
        installed.bin / "python", "-c", probe, cwd=installed.workdir, env=installed.env(installed.workdir)
    ).split()
    site = installed.venv.resolve()
    assert all(Path(module).resolve().is_relative_to(site) for module in modules), modules

    home = installed_stack.home
    run(installed.bin / "loraq-migrate", cwd=installed.workdir, env=installed.env(home))
    assert (home / "loraq.db").is_file()

    installed_stack.start_api()
    installed_stack.start_worker()
    # Ready once the worker has built the demo base model and reports itself alive.
    wait_for(
        lambda: httpx.get(installed_stack.base_url + "/readyz", timeout=5).status_code == 200,
        timeout=180,
        what="/readyz once the worker has built the demo model",
    )
    dashboard = httpx.get(installed_stack.base_url + "/", timeout=10)
    assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
    with installed_stack.client() as client:
        training = upload(client, chat_dataset())
        body = job_body(
            training["id"], adapter={"type": "lora", "r": 4}, method=method(**FAST_HYPERPARAMETERS)
        )
        created = create_job(client, body)
    job = installed_stack.wait_for_success(created["id"], timeout=300)
    assert len(job["result_files"]) == 1
