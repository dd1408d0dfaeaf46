"""The API under load: GET a job and list jobs at concurrency 1, 16, 64 and 256, on SQLite and Postgres.

Each database gets its own `loraq-api` (default settings) over N jobs inserted in bulk through the ORM.
Rounds are interleaved (SQLite, Postgres, SQLite, ...) so drift on a shared machine hits both alike. It
prints, per database, path and concurrency, the medians over rounds of p50/p99 latency, the spread of p99
and the answers that were not 200 (503 is the only allowed one), the time the API takes to answer again
after the 256-client burst, and GET latency while a large file's estimate runs.

    .venv/bin/python bench/api_load.py                        # 100,000 jobs, 3 rounds, 200 MB estimate
    .venv/bin/python bench/api_load.py --jobs 10000 --rounds 1 --estimate-mb 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

CONCURRENCY = (1, 16, 64, 256)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def checkout(ref: str, where: Path) -> Iterator[Path]:
    """The code of commit `ref` as a git worktree at `where` (another commit's API, run with it first on
    PYTHONPATH, beside this checkout's), removed on the way out."""
    git = ["git", "-C", str(REPO), "worktree"]
    subprocess.run([*git, "add", "--detach", str(where), ref], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run([*git, "remove", "--force", str(where)], check=False)


def fresh_postgres(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


class Api:
    """One `loraq-api` process on its own home and database."""

    def __init__(
        self, name: str, home: Path, database_url: str, model_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.home = home
        self.port = free_port()
        shutil.copytree(model_dir, home / "models" / model_dir.name)
        env = {
            **os.environ,
            "LORAQ_HOME": str(home),
            "LORAQ_DATABASE_URL": database_url,
            "PORT": str(self.port),
            **(env or {}),
        }
        log = (home / "api.log").open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "loraq-api")], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.key = (home / "admin.key").read_text().strip()
        self.database_url = database_url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def insert_jobs(database_url: str, count: int) -> list[str]:
    """count jobs in the default project, in bulk through the ORM; some of their ids."""
    from sqlalchemy import insert

    from loraq.core.db import make_engine
    from loraq.core.ids import new_id
    from loraq.jobs.tables import Job
    from loraq.projects import repository as projects
    from loraq.tables import Base  # noqa: F401  (every table, for the ORM)

    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = make_engine(url)
    from sqlalchemy.orm import Session

    from loraq.jobs.spec import JobCreate

    spec = JobCreate.model_validate({"model": "loraq-tiny-demo", "training_file": "file-bench"})
    assert spec.method is not None
    fields = {
        "method": spec.method.model_dump(mode="json"),
        "hyperparameters": spec.requested_hyperparameters.resolve(n_examples=100).model_dump(mode="json"),
        "adapter": spec.adapter.model_dump(mode="json"),
        "export": spec.export.model_dump(mode="json"),
    }
    ids: list[str] = []
    with Session(engine) as session:
        project = projects.find_project_by_name(session, "default")
        assert project is not None
        statuses = ["succeeded"] * 8 + ["failed", "cancelled"]
        for start in range(0, count, 5000):
            rows = []
            for index in range(start, min(count, start + 5000)):
                job_id = new_id("ftjob-")
                ids.append(job_id)
                rows.append(
                    {
                        "id": job_id,
                        "project_id": project.id,
                        "model": "loraq-tiny-demo",
                        "base_model": "loraq-tiny-demo",
                        "training_file": "file-bench",
                        "seed": index,
                        **fields,
                        "status": statuses[index % len(statuses)],
                        "result_files": [],
                    }
                )
            session.execute(insert(Job), rows)
            session.commit()
    engine.dispose()
    return random.Random(0).sample(ids, min(len(ids), 2000))


async def load(api: Api, paths: list[str], concurrency: int, requests: int) -> dict[str, Any]:
    """requests GETs of the paths (round robin), `concurrency` at a time: latencies and statuses.

    Each client holds its own keep-alive connection, as a dashboard or a CI job does, opened and used once
    before the clock starts. It writes requests made in advance and reads answers by their Content-Length:
    0.05-0.06 ms of CPU a request against httpx's 0.64-0.70, about the API's own, with which on a two-core
    machine it competed for the cores and timed its own event loop as much as the API (GET p99 at 64
    clients 66-254 ms under httpx, 36-40 ms this way, side by side: docs/benchmarks.md)."""
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    host, port = "127.0.0.1", api.port
    wanted = [
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {api.key}\r\n\r\n".encode()
        for path in paths
    ]
    queue = iter(range(requests))

    waiting_to_connect = concurrency
    everyone_connected = asyncio.Event()

    async def client_loop() -> None:
        nonlocal waiting_to_connect
        reader, writer = await asyncio.open_connection(host, port)
        await exchange(reader, writer, wanted[0])  # untimed: the connection made and proven
        waiting_to_connect -= 1
        if waiting_to_connect == 0:
            everyone_connected.set()
        await everyone_connected.wait()
        try:
            for index in queue:
                started = time.perf_counter()
                status: int | str
                try:
                    status, keep_alive = await exchange(reader, writer, wanted[index % len(wanted)])
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    status, keep_alive = type(error).__name__, False  # no answer at all: by its kind
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
                if not keep_alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    latencies.sort()
    return {
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "statuses": dict(statuses),
    }


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """One request on a keep-alive connection: the answer's status, and whether the connection stays open."""
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    length = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if length is None:
        raise ValueError("an answer without content-length")
    await reader.readexactly(int(length.group(1)))
    return int(head[9:12]), b"\r\nconnection: close" not in head


def recovery_seconds(api: Api) -> float:
    """After a burst: how long until a plain GET is answered 200 again."""
    started = time.perf_counter()
    while True:
        try:
            if (
                httpx.get(
                    api.url + "/v1/fine_tuning/jobs?limit=1", headers=api.headers(), timeout=5
                ).status_code
                == 200
            ):
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.01)


def big_dataset(path: Path, megabytes: int) -> Path:
    """A chat file of about this size, made once."""
    if path.exists() and path.stat().st_size >= megabytes << 20:
        return path
    rng = random.Random(0)
    with path.open("w") as out:
        index = 0
        while out.tell() < megabytes << 20:
            words = " ".join(f"w{rng.randrange(500)}" for _ in range(rng.randrange(10, 300)))
            record = {
                "messages": [
                    {"role": "user", "content": f"Q{index} {words}"},
                    {"role": "assistant", "content": words},
                ]
            }
            out.write(json.dumps(record) + "\n")
            index += 1
    return path


def gets_during_estimate(api: Api, dataset: Path, job_path: str) -> dict[str, Any]:
    """GET a job one at a time while the API estimates a large file: their latency, and the estimate's."""
    with httpx.Client(base_url=api.url, headers=api.headers(), timeout=600) as client:
        with dataset.open("rb") as handle:
            file_id = client.post(
                "/v1/files", files={"file": ("big.jsonl", handle)}, data={"purpose": "fine-tune"}
            ).json()["id"]
        body = {"model": "loraq-tiny-demo", "training_file": file_id}
        latencies: list[float] = []
        result: dict[str, Any] = {}

        async def run() -> None:
            async with httpx.AsyncClient(base_url=api.url, headers=api.headers(), timeout=600) as aclient:

                async def estimate() -> None:
                    started = time.perf_counter()
                    answer = await aclient.post("/v1/fine_tuning/jobs/estimate", json=body)
                    result["seconds"] = time.perf_counter() - started
                    result["status"] = answer.status_code
                    result["sampled"] = answer.json().get("sampled")

                task = asyncio.create_task(estimate())
                while not task.done():
                    started = time.perf_counter()
                    await aclient.get(job_path)
                    latencies.append(time.perf_counter() - started)
                await task

        asyncio.run(run())
    latencies.sort()
    return result | {
        "gets": len(latencies),
        "get_p50_ms": latencies[len(latencies) // 2] * 1000,
        "get_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="per path, concurrency and round")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--estimate-mb", type=int, default=200)
    args = parser.parse_args()

    from worker.demo_model import ensure_demo_model

    work = Path(tempfile.mkdtemp(prefix="loraq-api-load-"))
    model = ensure_demo_model(work / "model-src")
    apis: list[Api] = []
    try:
        for name, url in (
            ("sqlite", f"sqlite:///{work / 'sqlite' / 'loraq.db'}"),
            ("postgres", fresh_postgres(args.postgres, "loraq_api_load")),
        ):
            (work / name).mkdir(exist_ok=True)
            api = Api(name, work / name, url, model)
            started = time.perf_counter()
            ids = insert_jobs(url, args.jobs)
            print(f"{name}: {args.jobs} jobs inserted in {time.perf_counter() - started:.1f} s", flush=True)
            api.sample_ids = ids  # type: ignore[attr-defined]
            apis.append(api)

        results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        recoveries: dict[str, list[float]] = {api.name: [] for api in apis}
        for round_index in range(args.rounds):
            for concurrency in CONCURRENCY:
                for api in apis if round_index % 2 == 0 else reversed(apis):
                    paths = {
                        "GET job": [f"/v1/fine_tuning/jobs/{i}" for i in api.sample_ids],  # type: ignore[attr-defined]
                        "list jobs": ["/v1/fine_tuning/jobs?limit=20"],
                    }
                    for label, path_list in paths.items():
                        outcome = asyncio.run(load(api, path_list, concurrency, args.requests))
                        results.setdefault((api.name, label, concurrency), []).append(outcome)
                        if concurrency == CONCURRENCY[-1]:
                            recoveries[api.name].append(recovery_seconds(api))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)

        print(
            f"\n{args.jobs} jobs, {args.requests} requests per cell, {args.rounds} rounds"
            " (medians; p99 range)"
        )
        print(
            f"{'database':9} {'request':10} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99 range':>15}"
            "  answers"
        )
        for (name, label, concurrency), outcomes in results.items():
            p50 = statistics.median(o["p50"] for o in outcomes)
            p99s = [o["p99"] for o in outcomes]
            answers: Counter[int | str] = Counter()
            for outcome in outcomes:
                answers.update(outcome["statuses"])
            spread = f"{min(p99s):.1f}-{max(p99s):.1f}"
            p99 = statistics.median(p99s)
            print(f"{name:9} {label:10} {concurrency:7d} {p50:8.1f} {p99:8.1f} {spread:>15}  {dict(answers)}")
        for name, values in recoveries.items():
            print(
                f"{name}: first 200 after the {CONCURRENCY[-1]}-client burst"
                f" in {max(values) * 1000:.0f} ms at most"
            )

        dataset = big_dataset(
            Path(tempfile.gettempdir()) / f"loraq-bench-{args.estimate_mb}mb.jsonl", args.estimate_mb
        )
        for api in apis:
            job_path = f"/v1/fine_tuning/jobs/{api.sample_ids[0]}"  # type: ignore[attr-defined]
            during = gets_during_estimate(api, dataset, job_path)
            sampled = during["sampled"] or {}
            how = (
                f"sampled {sampled['examples']} of {sampled['of']} examples, "
                f"tokens ±{sampled['tokens_relative_error']:.1%}"
                if sampled
                else "not sampled"
            )
            print(
                f"{api.name}: during a {args.estimate_mb} MB estimate ({during['seconds']:.1f} s, "
                f"status {during['status']}, {how}): {during['gets']} GETs, "
                f"p50 {during['get_p50_ms']:.1f} ms, p99 {during['get_p99_ms']:.1f} ms"
            )
    finally:
        for api in apis:
            api.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
