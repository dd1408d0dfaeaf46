"""The embedded broker never hands a consumer half a message, however fast it polls."""

from __future__ import annotations

import threading
from pathlib import Path

from kombu import Connection

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

    consumer = threading.Thread(target=consume)
    consumer.start()
    with connection(folder) as conn:
        queue = conn.SimpleQueue("jobs")
        for n in range(MESSAGES):
            queue.put({"n": n, "body": PAYLOAD})
    consumer.join(timeout=120)
    assert not errors, errors[0]
    assert sorted(received) == list(range(MESSAGES))
