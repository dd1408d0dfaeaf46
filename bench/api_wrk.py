"""GET job under wrk: the API's own throughput, latency and CPU per request, with a load generator that
costs little CPU; optionally side by side with another commit of loraq, interleaved.

`bench/api_load.py` drives the API from Python (its own keep-alive client, about a tenth of the API's
CPU per request; it used httpx, which took as much as the API). This runs one `loraq-api` (default
settings, or whatever LORAQ_* the environment sets, e.g. LORAQ_API_WORKERS=1 for a single process) over
N jobs and lets `wrk` (apt-get install wrk) GET them at each concurrency for a few seconds. With
--against REF, a second `loraq-api` runs the code of REF (a git worktree, first on PYTHONPATH) on the same
database; rounds alternate which goes first, and the CPU the API's processes used per request (the
figure that host noise moves least) is printed with its ratio.
On Postgres, when the processes' pools together would pass the server's connections (two deployments of
two API processes with the default pool do), both run with a smaller pool and as many threads, and the
bench says so.

    .venv/bin/python bench/api_wrk.py                       # SQLite, 2,000 jobs, 1/16/64 clients
    LORAQ_API_WORKERS=1 .venv/bin/python bench/api_wrk.py --database postgres    # one API process
    .venv/bin/python bench/api_wrk.py --database postgres --jobs 10000 --against HEAD~1 --rounds 3
    .venv/bin/python bench/api_wrk.py --database postgres --list     # the jobs list, as the dashboard polls
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_load import Api, checkout, fresh_postgres, insert_jobs

# Of the machine's max_connections (100 by default), what the API processes may take; the rest is for the
# bench's own inserts and whoever else uses the server.
POSTGRES_CONNECTIONS = 90


def api_cpu_seconds(api: Api) -> float:
    """User + system CPU of the API's process and its children (uvicorn's workers)."""
    process = psutil.Process(api.process.pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        try:
            times = each.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_wrk(api: Api, script: Path, clients: int, seconds: int) -> dict[str, Any]:
    before = api_cpu_seconds(api)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script),
         "-H", f"Authorization: Bearer {api.key}", api.url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = api_cpu_seconds(api) - before
    lines = out.splitlines()
    latency = {line.split()[0]: _ms(line.split()[1]) for line in lines if line.strip()[:3] in ("50%", "99%")}
    requests = int(next(line.split()[0] for line in lines if "requests in" in line))
    return {
        "p50": latency["50%"],
        "p99": latency["99%"],
        "rate": float(next(line.split()[1] for line in lines if line.startswith("Requests/sec"))),
        "cpu_ms": cpu * 1000 / max(requests, 1),
        "errors": [line.strip() for line in lines if "Non-2xx" in line or "Socket errors" in line],
    }


def within_connection_limit(deployments: int, limit: int = POSTGRES_CONNECTIONS) -> dict[str, str]:
    """Pool and thread settings under which every API process of every deployment fits in Postgres's
    connections together; empty when the configured ones already do. Past the limit Postgres refuses
    connections ("too many clients") and the requests that needed them get 503s: a bench of the server's
    limit, not of the API."""
    from loraq.core.settings import get_settings

    settings = get_settings()  # the LORAQ_* the environment sets, as each API process will read them
    processes = deployments * settings.api_processes
    pool = settings.db_pool_size
    if processes * (pool + pool // 4) <= limit:
        return {}
    pool = max(1, int(limit / processes / 1.25))
    threads = min(settings.api_threads, pool)
    print(
        f"{processes} API processes x {settings.db_pool_size} connections would pass Postgres's {limit}:"
        f" running each with LORAQ_DB_POOL_SIZE={pool} LORAQ_API_THREADS={threads}"
    )
    return {"LORAQ_DB_POOL_SIZE": str(pool), "LORAQ_API_THREADS": str(threads)}


def _ms(value: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    raise ValueError(value)


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=8, help="per concurrency")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--against", metavar="REF", help="also run this commit's API, interleaved")
    parser.add_argument(
        "--list", action="store_true", help="GET the jobs list (the dashboard's poll) instead of single jobs"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    from worker.demo_model import ensure_demo_model

    work = Path(tempfile.mkdtemp(prefix="loraq-api-wrk-"))
    apis: list[Api] = []
    worktrees = ExitStack()
    try:
        model = ensure_demo_model(work / "model-src")
        url = (
            f"sqlite:///{work / 'loraq.db'}"
            if args.database == "sqlite"
            else fresh_postgres(args.postgres, "loraq_api_wrk")
        )
        shared = within_connection_limit(2 if args.against else 1) if args.database == "postgres" else {}
        (work / "this").mkdir()
        apis.append(Api("this", work / "this", url, model, env=shared))
        if args.against:
            tree = worktrees.enter_context(checkout(args.against, work / "against-tree"))
            (work / "against").mkdir()
            apis.append(
                Api(args.against, work / "against", url, model, env={**shared, "PYTHONPATH": str(tree)})
            )
        ids = insert_jobs(url, args.jobs)
        # wrk asks for one path at a time: a Lua script walks 500 of the jobs round robin, or asks for the
        # list's first page, 20 jobs, as the dashboard does.
        script = work / "paths.lua"
        wanted = (
            ["/v1/fine_tuning/jobs?limit=20"]
            if args.list
            else [f"/v1/fine_tuning/jobs/{i}" for i in ids[:500]]
        )
        paths = ",".join(f'"{path}"' for path in wanted)
        script.write_text(
            f"paths = {{{paths}}}\ncounter = 0\n"
            "request = function()\n  counter = counter + 1\n"
            "  return wrk.format('GET', paths[(counter % #paths) + 1])\nend\n"
        )
        results: dict[tuple[str, int], list[dict[str, Any]]] = {}
        clients_list = [int(c) for c in args.clients.split(",")]
        for round_index in range(args.rounds):
            for clients in clients_list:
                for api in apis if round_index % 2 == 0 else reversed(apis):
                    run_wrk(api, script, 4, 1)  # warm: connections made, statements prepared
                    results.setdefault((api.name, clients), []).append(
                        run_wrk(api, script, clients, args.seconds)
                    )
        print(
            f"\n{args.database}, {args.jobs} jobs; {'list jobs' if args.list else 'GET job'} under wrk,"
            f" {args.seconds} s per cell,"
            f" {args.rounds} round(s), medians (CPU: the API's processes, per request)"
        )
        print(f"{'code':>8} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'CPU ms':>7}  errors")
        for (name, clients), cells in results.items():
            errors = sorted({error for cell in cells for error in cell["errors"]})
            print(
                f"{name:>8} {clients:>7} {statistics.median(c['p50'] for c in cells):8.1f}"
                f" {statistics.median(c['p99'] for c in cells):8.1f}"
                f" {statistics.median(c['rate'] for c in cells):8.0f}"
                f" {statistics.median(c['cpu_ms'] for c in cells):7.2f} ",
                "; ".join(errors) or "no errors",
            )
        if args.against:
            print(f"\nthis / {args.against}, per round (CPU ms per request; req/s):")
            for clients in clients_list:
                pairs = list(zip(results[("this", clients)], results[(args.against, clients)], strict=True))
                print(
                    f"{clients:>3} clients: CPU {_ratio([a['cpu_ms'] / b['cpu_ms'] for a, b in pairs])},"
                    f" req/s {_ratio([a['rate'] / b['rate'] for a, b in pairs])}"
                )
    finally:
        for api in apis:
            api.stop()
        worktrees.close()  # once the API running its code has stopped
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
