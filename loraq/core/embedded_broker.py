"""The embedded default's broker: kombu's filesystem transport, with messages written atomically.

kombu writes a message file in place while a consumer may already be moving it away: the lock it
takes is advisory and the reader never takes it, so a reader polling at the wrong moment gets half a
message, and Celery's consumer dies on the JSON error. Here each message is written under a name no
reader matches, then renamed into place, which is atomic within one directory.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "loraq-filesystem"


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # as kombu names it
        # kombu's own naming: time-ordered, and its readers pick "<name>.<queue>.msg" files only.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"
        with open(partial, "wb") as file:
            file.write(str_to_bytes(dumps(payload)))
        os.replace(partial, final)


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
