"""LORAQ_API_WORKERS > 1: several serving processes on one port, each with its own socket. Connections
opened together spread over them, one that dies is replaced, all stop with their parent, each logs in the
configured format, and a port another program holds fails the start."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import httpx
import psutil

from tests.stack import Stack, spawned_children, wait_for

# What a client that opens many connections at once, a proxy's pool or a load generator, does.
CONNECTIONS = 64


def two_processes(tmp_path: Path, **env: str) -> Stack:
    stack = Stack(
        name="two-processes",
        home=tmp_path,
        env={"LORAQ_HOME": str(tmp_path), "LORAQ_API_WORKERS": "2", **env},
    )
    stack.start_api()
    assert stack.api is not None
    wait_for(
        lambda: len(serving(stack)) == 2 and all(listening(stack, p) for p in serving(stack)),
        timeout=60,
        what="two serving processes listening",
    )
    return stack


def serving(stack: Stack) -> list[psutil.Process]:
    assert stack.api is not None
    return spawned_children(stack.api.pid)


def listening(stack: Stack, process: psutil.Process) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == stack.port for c in process.net_connections("tcp")
    )


def connections_held(stack: Stack) -> dict[int, int]:
    """Per serving process, the client connections it has accepted."""
    return {
        process.pid: sum(
            1
            for c in process.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == stack.port
        )
        for process in serving(stack)
    }


def test_connections_opened_together_spread_over_the_processes(tmp_path: Path) -> None:
    """With one socket shared, the process that wakes first accepts every connection waiting (64 seen
    split 44/20, or all on one) and the other core idles. Each process's own socket lets the kernel
    spread them: a split of 64 more lopsided than 18/46 has odds of about 1 in 4,400 (binomial)."""
    stack = two_processes(tmp_path)
    clients: list[socket.socket] = []
    try:
        for _ in range(CONNECTIONS):
            clients.append(socket.create_connection(("127.0.0.1", stack.port), timeout=10))
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: loraq\r\n\r\n")
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200 "), "every connection is answered"
        held = connections_held(stack)
        assert sum(held.values()) == CONNECTIONS, held
        assert min(held.values()) >= 18, held
    finally:
        for client in clients:
            client.close()
        stack.stop()


def test_a_serving_process_that_dies_is_replaced(tmp_path: Path) -> None:
    stack = two_processes(tmp_path)
    try:
        victim, _ = serving(stack)
        victim.kill()
        victim.wait(timeout=10)
        # The port still answers meanwhile: the other process's socket takes every new connection.
        assert httpx.get(stack.base_url + "/healthz", timeout=10).status_code == 200

        def replaced() -> bool:
            now = serving(stack)
            return (
                len(now) == 2
                and victim.pid not in {p.pid for p in now}
                and all(listening(stack, p) for p in now)
            )

        wait_for(replaced, timeout=60, what="a new serving process in the killed one's place")
        assert f"API process {victim.pid} exited with -9; starting another" in stack.logs("api.log")
        assert httpx.get(stack.base_url + "/healthz", timeout=10).status_code == 200
    finally:
        stack.stop()
    assert stack.api is not None and stack.api.returncode == 0, stack.logs("api.log")  # a clean stop


def test_a_key_revoked_through_one_process_is_refused_by_every_process_at_once(tmp_path: Path) -> None:
    """Each process trusts a key it checked for LORAQ_API_KEY_CACHE_SECONDS (10); a revocation through one
    must not leave the other answering for the leaked key until then."""
    stack = two_processes(tmp_path)
    clients: list[httpx.Client] = []
    try:
        with stack.client() as admin:
            project = admin.post("/v1/projects", json={"name": "leaky"}).json()
            key = admin.post(f"/v1/projects/{project['id']}/api_keys").json()
        # Each client holds its own connection; together they reach both processes, and each process
        # checks the key, and keeps it, on its first request.
        for _ in range(CONNECTIONS // 2):
            client = stack.client(key["value"])
            clients.append(client)
            assert client.get("/v1/files").status_code == 200
        assert min(connections_held(stack).values()) > 0, "both processes have checked the key"
        with stack.client() as admin:
            revoked = admin.delete(f"/v1/projects/{project['id']}/api_keys/{key['id']}")
            assert revoked.status_code == 200
        answers = [client.get("/v1/files").status_code for client in clients]
        assert answers == [401] * len(clients)
    finally:
        for client in clients:
            client.close()
        stack.stop()


def test_a_port_another_program_holds_fails_the_start(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second program with the same user share the port with loraq, each taking
    a part of the connections: the start checks the port is free first, as one uvicorn process does."""
    stack = Stack(
        name="port-taken", home=tmp_path, env={"LORAQ_HOME": str(tmp_path), "LORAQ_API_WORKERS": "2"}
    )
    with socket.create_server(("127.0.0.1", stack.port), reuse_port=True):
        api = stack._spawn("loraq-api", "api.log")
        assert api.wait(timeout=60) == 1
    assert f"cannot listen on 127.0.0.1:{stack.port}" in stack.logs("api.log")
    assert "Started server process" not in stack.logs("api.log")


def test_each_api_process_logs_every_request_in_the_configured_format(tmp_path: Path) -> None:
    """The serving processes are spawned: they start with Python's default logging, and each must set up
    loraq's own, or their access lines are lost and LORAQ_LOG_FORMAT ignored."""
    stack = two_processes(tmp_path, LORAQ_LOG_FORMAT="json")
    try:
        # A new connection each: the kernel spreads them over both processes' sockets.
        for index in range(20):
            assert httpx.get(f"{stack.base_url}/healthz?probe={index}", timeout=10).status_code == 200
        expected = {f"/healthz?probe={index}" for index in range(20)}

        def log_lines() -> list[str]:
            return [line for line in (tmp_path / "api.log").read_text().splitlines() if line.strip()]

        def logged() -> set[str]:
            records = [json.loads(line) for line in log_lines() if line.startswith("{")]
            return {
                path
                for record in records
                if record["logger"] == "uvicorn.access"
                for path in expected
                if f'"GET {path} ' in record["message"]
            }

        wait_for(lambda: logged() == expected, timeout=10, what=f"access lines for {sorted(expected)}")
        assert [line for line in log_lines() if not line.startswith("{")] == []
        # Each serving process's own INFO line: both set up logging, whichever got the requests.
        started = [line for line in log_lines() if "Started server process" in line]
        assert len(started) == 2, started
    finally:
        stack.stop()


def test_the_serving_processes_stop_with_their_parent_killed_alone(tmp_path: Path) -> None:
    """Serving processes left behind by a SIGKILL of their parent (the OOM killer, `kill -9` of the pid a
    supervisor knows) would go on serving unsupervised and hold the port against the restart."""
    stack = two_processes(tmp_path)
    try:
        assert stack.api is not None
        children = serving(stack)
        os.kill(stack.api.pid, signal.SIGKILL)  # the parent alone
        stack.api.wait(timeout=30)
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert len(gone) == 2 and not alive, [process.pid for process in alive]
        # The port is free again: a new API starts on it.
        stack.start_api("api-restarted.log")
    finally:
        stack.stop()
