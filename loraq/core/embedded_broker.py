"""The embedded default's broker: kombu's filesystem transport, with every file written atomically.

kombu writes its files in place while another process may be reading them: its locks are taken after
the file is opened (a message file is read with no lock at all), so a reader that lands in between
gets an empty or half-written file, and Celery's consumer dies on the JSON error. Here a message is
written under a name no reader matches and renamed into place; an exchange's table of queues is
rewritten the same way, under a lock of its own that serializes the binders; a consumer claims a
message by renaming it into a folder beside the queue's (not into /tmp, which may be another
filesystem, where a move is a copy that two consumers can both make). A rename within one filesystem
is atomic.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from time import monotonic, time
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.transport.virtual import Channel as VirtualChannel
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

from loraq.storage.atomic import write_atomically

SCHEME = "loraq-filesystem"

Table = list[filesystem.exchange_queue_t]


# A claimed or partial file this old was left by a process that died holding it.
LEFTOVER_SECONDS = 60


def _remove_older_than(folder: Path, suffix: str, seconds: float) -> None:
    cutoff = time() - seconds
    for entry in os.scandir(folder):
        if entry.name.endswith(suffix) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # as kombu names it
        # kombu's own naming: time-ordered, and its readers pick "<name>.<queue>.msg" files only.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        write_atomically(Path(self.data_folder_out) / name, str_to_bytes(dumps(payload)))

    _claimed: Path | None = None

    def _get(self, queue: Any) -> Any:  # type: ignore[override]
        wanted = f"{queue}.msg"
        inbox = Path(self.data_folder_in)
        if self._claimed is None:  # made once, not on every poll (ten a second)
            self._claimed = inbox.with_name(inbox.name + "-claimed")
            self._claimed.mkdir(exist_ok=True)
            # What a killed consumer had claimed but not read (the reconciler has republished its job),
            # and what a killed publisher had half written: a live one holds either for milliseconds.
            _remove_older_than(self._claimed, "", LEFTOVER_SECONDS)
            _remove_older_than(Path(self.data_folder_out), ".partial", LEFTOVER_SECONDS)
        claimed = self._claimed
        for name in sorted(os.listdir(inbox)):
            if name.partition(".")[2] != wanted:
                continue
            mine = claimed / name
            try:
                os.rename(inbox / name, mine)  # one consumer wins; the others find it gone
            except FileNotFoundError:
                continue
            payload = mine.read_bytes()
            mine.unlink()
            return loads(bytes_to_str(payload))
        raise filesystem.Empty()

    def get_table(self, exchange: str) -> Table:
        try:
            rows = loads(bytes_to_str(self._exchange_file(exchange).read_bytes()))
        except FileNotFoundError:
            return []
        return [filesystem.exchange_queue_t(*row) for row in rows]

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda table: table if entry in table else [entry, *table])

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any
    ) -> None:
        VirtualChannel._delete(self, queue)  # purge the queue's messages, as kombu does
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda table: [row for row in table if row != entry])

    def _update_table(self, exchange: str, change: Callable[[Table], Table]) -> None:
        """Read, change and atomically replace an exchange's table, one process at a time."""
        path = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "ab") as guard:
            filesystem.lock(guard, filesystem.LOCK_EX)
            try:
                table = self.get_table(exchange)
                updated = change(table)
                if updated != table or not path.exists():
                    write_atomically(path, str_to_bytes(dumps(updated)))
            finally:
                filesystem.unlock(guard)


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
