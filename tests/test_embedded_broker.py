"""The embedded broker never hands a consumer half a message, however fast it polls."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from kombu import Connection, Exchange, Queue

from loraq.core import embedded_broker

MESSAGES = 200
PAYLOAD = "x" * 2_000_000  # large, so a write takes long enough for a poll to land in it


def connection(folder: Path) -> Connection:
    return Connection(
        f"{embedded_broker.SCHEME}://",
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder.with_name("control")),
            "store_processed": False,
            "polling_interval": 0.001,
        },
    )


def test_a_consumer_polling_during_writes_gets_only_whole_messages(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    received: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with connection(folder) as conn:
                queue = conn.SimpleQueue("jobs")
                while len(received) < MESSAGES:
                    message = queue.get(timeout=60)
                    assert message.payload["body"] == PAYLOAD
                    received.append(message.payload["n"])
                    message.ack()
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    # Bound before either side starts: kombu keeps bindings in state that every connection of a process
    # shares, so a second connection that binds would skip writing the table the first is still writing,
    # and publish to no queue (across processes, the API and a worker, each writes its own).
    with connection(folder) as conn:
        conn.SimpleQueue("jobs")
    consumer = threading.Thread(target=consume)
    consumer.start()
    with connection(folder) as conn:
        queue = conn.SimpleQueue("jobs")
        for n in range(MESSAGES):
            queue.put({"n": n, "body": PAYLOAD})
    consumer.join(timeout=120)
    assert not errors, errors[0]
    assert sorted(received) == list(range(MESSAGES))


def test_queues_bound_while_others_publish_are_all_routed(tmp_path: Path) -> None:
    """Workers binding their queues while the API publishes: every read of an exchange's table is whole,
    and no bind loses another's queue (kombu's own writer truncates the file before it locks it)."""
    folder = tmp_path / "broker"
    folder.mkdir()
    queues = [f"q{n}" for n in range(6)]
    errors: list[BaseException] = []

    def bind(exchange: Exchange, name: str) -> None:
        try:
            with connection(folder) as conn:
                Queue(name, exchange, routing_key=name)(conn.default_channel).declare()  # writes its table
        except BaseException as error:
            errors.append(error)

    def publish(exchange: Exchange, done: threading.Event) -> None:
        try:
            with connection(folder) as conn:
                while not done.is_set():
                    conn.default_channel.get_table(exchange.name)  # what a publish reads
        except BaseException as error:
            errors.append(error)

    for round_number in range(20):  # each round races on a new exchange's first write
        exchange, done = Exchange(f"jobs{round_number}", type="direct"), threading.Event()
        readers = [threading.Thread(target=publish, args=(exchange, done)) for _ in range(2)]
        binders = [threading.Thread(target=bind, args=(exchange, name)) for name in queues]
        for thread in readers + binders:
            thread.start()
        for thread in binders:
            thread.join(timeout=60)
        done.set()
        for thread in readers:
            thread.join(timeout=60)
        assert not errors, errors[0]
        with connection(folder) as conn:
            bound = {row.queue for row in conn.default_channel.get_table(exchange.name)}
        assert bound == set(queues), f"round {round_number}: a concurrent bind lost another's queue"

    # Consumed messages are claimed beside the queue's folder, never moved out to the system's /tmp.
    with connection(folder) as conn:
        conn.SimpleQueue("q0").put({"n": 1})
        assert conn.SimpleQueue("q0").get(timeout=5).payload == {"n": 1}
    assert list((tmp_path / "broker-claimed").iterdir()) == []


def test_a_new_consumer_removes_what_killed_processes_left_behind(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    claimed = tmp_path / "broker-claimed"
    folder.mkdir()
    claimed.mkdir()
    stale = time.time() - 2 * embedded_broker.LEFTOVER_SECONDS
    left = {
        "claimed_by_the_dead": claimed / "1_a.sweep.msg",
        "half_written": folder / "1_b.sweep.msg.0123.partial",
    }
    kept = {"just_claimed": claimed / "2_c.sweep.msg", "just_writing": folder / "2_d.sweep.msg.4567.partial"}
    for path in [*left.values(), *kept.values()]:
        path.write_bytes(b"{}")
    for path in left.values():
        os.utime(path, (stale, stale))

    with connection(folder) as conn:
        queue = conn.SimpleQueue("sweep")  # a queue no other test of this process bound
        queue.put({"n": 1})
        assert queue.get(timeout=10).payload == {"n": 1}

    assert not any(path.exists() for path in left.values())
    assert all(path.exists() for path in kept.values())
