"""LORAQ_API_WORKERS > 1: serving processes that each listen on their own socket of the one port.

uvicorn's `--workers` share one listening socket and take turns accepting from it: a process that wakes
first accepts every connection waiting, so a client that opens many at once (a load balancer's pool, a
dashboard's users behind one proxy) lands most of them on one process while another core idles (64
connections seen split 44/20, or all on one). Here each process binds the port itself with SO_REUSEPORT
and the kernel spreads new connections over the sockets by their addresses (GET job at 64 clients on two
cores: p99 58 against 69 ms, and no round with one process idle, which uvicorn's sharing had in one of
four; docs/benchmarks.md).

This process starts them, restarts one that dies, and stops them all on SIGTERM, SIGINT or SIGHUP. Each
stops itself if this process is killed alone (api/main.py: create_served_app). They share a count of
revoked keys, so that a key revoked through one is refused by all at once (loraq.projects.keys).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

from loraq.projects.keys import share_revocations

log = logging.getLogger("loraq.api")

# A process that exits with an error sooner than this after it started failed at starting (a bad setting,
# a port it cannot bind): starting it again would fail the same way, in a loop. One killed by a signal
# (the OOM killer, kill -9) is replaced whenever it dies.
STARTUP_SECONDS = 10.0
# How long the processes get to finish the requests in flight, together, before they are killed.
STOP_SECONDS = 30.0


def serve_in_processes(count: int, host: str, port: int, uvicorn_options: dict[str, Any]) -> int:
    """Runs `count` serving processes until a signal stops them; the exit status for the command."""
    # Bound without SO_REUSEPORT first, so that a port another program holds fails the start as a single
    # process's would, instead of being shared with it.
    try:
        socket.create_server((host, port), family=_family(host)).close()
    except OSError as error:
        log.error("cannot listen on %s:%s: %s", host, port, error)
        return 1
    spawn = multiprocessing.get_context("spawn")
    revocations = Revocations(spawn)
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("%s: stopping the API processes", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)

    def start() -> tuple[BaseProcess, float]:
        process = spawn.Process(
            target=_serve,
            args=(host, port, uvicorn_options, revocations),
            name="loraq-api-serving",
            daemon=False,
        )
        process.start()
        return process, time.monotonic()

    running = [start() for _ in range(count)]
    status = 0
    while not stopping.is_set():
        wait([process.sentinel for process, _ in running], timeout=0.5)
        for index, (process, started) in enumerate(running):
            if process.is_alive() or stopping.is_set():
                continue
            failed_to_start = time.monotonic() - started < STARTUP_SECONDS and (process.exitcode or 0) > 0
            if failed_to_start:
                log.error(
                    "API process %d exited with %s as it started; stopping", process.pid, process.exitcode
                )
                status = 1
                stopping.set()
                break
            log.warning("API process %d exited with %s; starting another", process.pid, process.exitcode)
            running[index] = start()
    _stop_all([process for process, _ in running])
    return status


class Revocations:
    """The serving processes' count of revoked keys, in shared memory."""

    def __init__(self, context: SpawnContext) -> None:
        self._count = context.Value("q", 0)

    @property
    def value(self) -> int:
        return int(self._count.get_obj().value)  # read on every request: an aligned word, without the lock

    def increment(self) -> None:
        with self._count.get_lock():
            self._count.value += 1


def _serve(host: str, port: int, uvicorn_options: dict[str, Any], revocations: Revocations) -> None:
    share_revocations(revocations)
    # backlog: uvicorn's default; the socket is made here, so uvicorn's own setting does not reach it.
    listening = socket.create_server((host, port), family=_family(host), backlog=2048, reuse_port=True)
    uvicorn.Server(uvicorn.Config(**uvicorn_options)).run(sockets=[listening])


def _stop_all(processes: list[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then the lifespan
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("API process %d did not stop in %.0f s; killed", process.pid, STOP_SECONDS)
            process.kill()
            process.join()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
