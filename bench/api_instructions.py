"""CPU instructions the API executes per request, counted by valgrind's callgrind: a figure that host noise
does not move, so a change of a few percent shows in one run.

Wall time and CPU time per request drift by a third between minutes on a shared 2-core host (see
docs/benchmarks.md); an instruction count repeats within about 1%. This runs the API app in a child
process under `valgrind --tool=callgrind` with instrumentation off, warms it with a few requests, then
counts only the measured requests: the app's whole path (middleware, key check, route, query, response)
and its thread pool, in process through ASGI, with no HTTP server. Postgres's own work is not counted;
the round trips are, as the API's side of them.

With --against REF, the same requests run on another commit's code (a git worktree, first on PYTHONPATH)
against the same database, and the ratio is printed.

    apt-get install valgrind
    .venv/bin/python bench/api_instructions.py                                  # Postgres, 10,000 jobs
    .venv/bin/python bench/api_instructions.py --against HEAD~1 --requests 200
    .venv/bin/python bench/api_instructions.py --database sqlite --paths job,list
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What each measured request asks for; {job} is one of the inserted jobs, a different one each time.
PATHS = {
    "job": "/v1/fine_tuning/jobs/{job}",
    "list": "/v1/fine_tuning/jobs?limit=20",
    "me": "/v1/me",
    "healthz": "/healthz",
}


# --- the child: the app under callgrind ----------------------------------------------------------------


def child(kind: str, requests: int, ids: list[str], key: str) -> None:
    """Warm the app, say "ready", count `requests` requests between "go" and "done" (the parent switches
    callgrind's instrumentation on and off around them), then wait for "exit"."""
    import uvloop

    from api.app import create_app

    app = create_app()
    paths = [PATHS[kind].format(job=job_id) for job_id in ids]

    async def call(path: str) -> None:
        route, _, query = path.partition("?")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": route, "raw_path": route.encode(), "query_string": query.encode(),
            "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())],
        }  # fmt: skip
        statuses: list[int] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        await app(scope, receive, send)
        if statuses != [200]:
            raise SystemExit(f"GET {path}: {statuses}")

    async def wait_for(word: str) -> None:
        # Polls stdin instead of blocking on it: callgrind_control reaches a process that is running.
        line = ""
        while line.strip() != word:
            if select.select([sys.stdin], [], [], 0)[0]:
                line = sys.stdin.readline()
            else:
                await asyncio.sleep(0.02)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            for index in range(min(50, requests)):  # connections made, statements cached and prepared
                await call(paths[index % len(paths)])
            print("ready", flush=True)
            await wait_for("go")
            for index in range(requests):
                await call(paths[index % len(paths)])
            print("done", flush=True)
            await wait_for("exit")

    uvloop.run(run())


# --- the parent --------------------------------------------------------------------------------------------


def count(code: Path | None, kind: str, args: argparse.Namespace, env: dict[str, str], work: Path) -> int:
    """Instructions per request of `kind` on the code at `code` (None: this checkout)."""
    out = work / f"callgrind.{kind}.{os.getpid()}.%p"
    child_env = {**env, "PYTHONPATH": str(code or REPO)}
    log = (work / "child.log").open("a")  # valgrind's and the app's messages, shown if it fails
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, str(Path(__file__).resolve()), "--child", kind, "--requests", str(args.requests)],
        env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        cwd=work,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None

    def expect(word: str) -> None:
        line = process.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != word:
            process.kill()
            log.flush()
            raise SystemExit(f"the app under callgrind said {line!r}, not {word!r}:\n{tail(log.name)}")

    def control(*flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(process.pid)], check=True, capture_output=True)

    expect("ready")
    control("--instr=on")
    process.stdin.write("go\n")
    process.stdin.flush()
    expect("done")
    control("--instr=off")
    control("--dump")
    process.stdin.write("exit\n")
    process.stdin.flush()
    process.wait(timeout=120)
    total = 0
    for dump in work.glob(f"callgrind.{kind}.{os.getpid()}.*"):
        # A dump on request leaves its header's summary at 0 and puts the count in its closing totals.
        lines = dump.read_text(errors="replace").splitlines()
        total += max(int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:")))
        dump.unlink()
    if total == 0:
        raise SystemExit(f"callgrind counted nothing for {kind} on {code or REPO}:\n{tail(log.name)}")
    return total // args.requests


def tail(path: str, lines: int = 30) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per cell")
    parser.add_argument("--paths", default="job,list,me", help=f"of {', '.join(PATHS)}")
    parser.add_argument("--against", metavar="REF", help="also count this commit's code")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests, os.environ["BENCH_JOB_IDS"].split(","), os.environ["BENCH_KEY"])
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")

    sys.path.insert(0, str(REPO))
    from bench.api_load import checkout, fresh_postgres, insert_jobs
    from loraq.core.db import session_scope
    from loraq.core.migrate import upgrade_to_head
    from loraq.projects.keys import ensure_admin_key

    work = Path(tempfile.mkdtemp(prefix="loraq-api-instructions-"))
    worktrees = ExitStack()
    try:
        url = (
            f"sqlite:///{work / 'loraq.db'}"
            if args.database == "sqlite"
            else fresh_postgres(args.postgres, "loraq_api_instructions")
        )
        env = {**os.environ, "LORAQ_HOME": str(work / "home"), "LORAQ_DATABASE_URL": url}
        os.environ.update(env)
        upgrade_to_head()
        with session_scope() as session:
            key = ensure_admin_key(session, work / "home" / "admin.key")
        assert key is not None
        ids = insert_jobs(url, args.jobs)[:300]
        env |= {"BENCH_JOB_IDS": ",".join(ids), "BENCH_KEY": key}
        codes: list[tuple[str, Path | None]] = [("this", None)]
        if args.against:
            codes.append(
                (args.against, worktrees.enter_context(checkout(args.against, work / "against-tree")))
            )
        print(f"\n{args.database}, {args.jobs} jobs; instructions per request, {args.requests} requests each")
        heading = " ".join(f"{name:>14}" for name, _ in codes)
        print(f"{'request':>8} {heading}" + ("   ratio" if args.against else ""))
        for kind in args.paths.split(","):
            counts = [count(code, kind, args, env, work) for _, code in codes]
            ratio = f"   {counts[0] / counts[1]:.3f}x" if len(counts) == 2 else ""
            print(f"{kind:>8} " + " ".join(f"{c:>14,}" for c in counts) + ratio, flush=True)
    finally:
        worktrees.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
