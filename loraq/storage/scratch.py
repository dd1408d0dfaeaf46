"""Scratch space under LORAQ_HOME: named after the process that owns it, so what a killed one left is found.

A scratch entry is named <label>@<host>@<pid>@<random>. Several API and worker processes may share one
LORAQ_HOME: an entry is removed only when it belongs to this host and its process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_FIELDS = 4


def owner_prefix(label: str) -> str:
    return f"{label}@{socket.gethostname()}@{os.getpid()}@"


@contextmanager
def scratch_dir(root: Path, label: str) -> Iterator[Path]:
    """A private directory under root, removed on exit, or at a later start if this process is killed."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(root)  # a process killed alone (out of memory) left its entry behind
    with tempfile.TemporaryDirectory(prefix=owner_prefix(label), dir=root) as path:
        yield Path(path)


@contextmanager
def scratch_file(root: Path, label: str, suffix: str = "") -> Iterator[IO[bytes]]:
    """A private file under root, removed on exit (unless moved away meanwhile), or at a later start if
    this process is killed."""
    root.mkdir(parents=True, exist_ok=True)
    path: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(
            prefix=owner_prefix(label), suffix=suffix, dir=root, delete=False
        ) as handle:
            path = Path(handle.name)
            yield handle
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def remove_stale_scratch(root: Path) -> None:
    """Delete the entries of this host's processes that died without removing them (kill -9)."""
    host = socket.gethostname()
    for path in root.glob("*@*@*@*") if root.is_dir() else ():
        _label, owner_host, pid, _random = path.name.split("@", _FIELDS - 1)
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a process that died", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    # A killed child that nobody has reaped yet still answers signals; as a zombie it has exited.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
