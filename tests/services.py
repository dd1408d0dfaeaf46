"""Private PostgreSQL and Redis servers for tests that stop, restart or flush them.

Each runs from its own temporary directory on a free port and is gone afterwards, so a fault test never
touches the machine's own servers, which the rest of the suite (and other work on the machine) shares.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from tests.stack import free_port, wait_for


def _postgres_bin_dir() -> Path:
    """The newest Debian-packaged PostgreSQL's programs, else whatever initdb is on PATH."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if debian:
        return Path(debian[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("no PostgreSQL server programs (initdb) on this machine")
    return Path(initdb).parent


@dataclass
class PostgresServer:
    """A throwaway cluster; as root it runs as the `postgres` user, since the server refuses root."""

    directory: Path
    port: int = field(default_factory=free_port)
    bin_dir: Path = field(default_factory=_postgres_bin_dir)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.directory)
        if result.returncode != 0:
            log = self.directory / "server.log"
            raise RuntimeError(
                f"{program} failed: {result.stdout}{result.stderr}\n{log.read_text() if log.exists() else ''}"
            )

    def init(self) -> None:
        self._run("initdb", "--pgdata", str(self.data_dir), "--username", "postgres", "--auth", "trust")

    def start(self) -> None:
        # Its socket stays in its own directory; only TCP on loopback is served.
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "server.log")
        self._run("pg_ctl", "--pgdata", str(self.data_dir), "--log", log, "--wait", "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "--pgdata", str(self.data_dir), "--mode", "fast", "--wait", "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def private_postgres() -> Iterator[PostgresServer]:
    """A running private cluster, stopped and deleted on exit."""
    # Not under pytest's basetemp: that is root's and mode 0700, which the postgres user cannot enter.
    directory = Path(tempfile.mkdtemp(prefix="loraq-test-postgres-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    server = PostgresServer(directory)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            if (server.data_dir / "postmaster.pid").exists():
                server.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@dataclass
class RedisServer:
    """A redis-server without persistence; stop and start keep its port, as a restarted host would."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # No persistence: a stop loses everything, as a flushed or replaced broker would.
        options = {"--port": str(self.port), "--bind": "127.0.0.1", "--dir": str(self.directory)}
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    *(word for pair in options.items() for word in pair),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            assert self.process is not None and self.process.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, timeout=30, what="the private redis-server to answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A running private redis-server, stopped and deleted on exit."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="loraq-test-redis-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
