"""GET job under wrk: the API's own throughput and latency, with a load generator that costs little CPU.

`bench/api_load.py` drives the API with Python (httpx), which on a small machine takes about as much CPU
per request as the API itself. This runs one `loraq-api` (default settings, or whatever LORAQ_* the
environment sets, e.g. LORAQ_API_WORKERS=2) over N jobs and lets `wrk` (apt-get install wrk) GET them at
each concurrency for a few seconds.

    .venv/bin/python bench/api_wrk.py                       # SQLite, 2,000 jobs, 1/16/64 clients
    LORAQ_API_WORKERS=2 .venv/bin/python bench/api_wrk.py --database postgres
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_load import Api, fresh_postgres, insert_jobs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=8, help="per concurrency")
    parser.add_argument("--clients", default="1,16,64")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    from worker.demo_model import ensure_demo_model

    work = Path(tempfile.mkdtemp(prefix="loraq-api-wrk-"))
    model = ensure_demo_model(work / "model-src")
    (work / args.database).mkdir()
    url = (
        f"sqlite:///{work / 'sqlite' / 'loraq.db'}"
        if args.database == "sqlite"
        else fresh_postgres(args.postgres, "loraq_api_wrk")
    )
    api = Api(args.database, work / args.database, url, model)
    ids = insert_jobs(url, args.jobs)
    # wrk asks for one path at a time: a Lua script walks 500 of the jobs round robin.
    script = work / "paths.lua"
    paths = ",".join(f'"/v1/fine_tuning/jobs/{job_id}"' for job_id in ids[:500])
    script.write_text(
        f"paths = {{{paths}}}\ncounter = 0\n"
        "request = function()\n  counter = counter + 1\n"
        "  return wrk.format('GET', paths[(counter % #paths) + 1])\nend\n"
    )
    print(f"{args.database}, {args.jobs} jobs; GET job under wrk, {args.seconds} s per row")
    print(f"{'clients':>7} {'p50':>10} {'p99':>10} {'req/s':>8}  errors")
    try:
        for clients in (int(c) for c in args.clients.split(",")):
            out = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    f"-c{clients}",
                    f"-d{args.seconds}s",
                    "--latency",
                    "-s",
                    str(script),
                    "-H",
                    f"Authorization: Bearer {api.key}",
                    api.url,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            fields = {
                line.split()[0]: line.split()[1]
                for line in out.splitlines()
                if line.strip()[:3] in ("50%", "99%")
            }
            rate = next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec"))
            errors = [
                line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line
            ]
            print(
                f"{clients:>7} {fields['50%']:>10} {fields['99%']:>10} {rate:>8}",
                "; ".join(errors) or "no errors",
            )
    finally:
        api.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
