"""Reading files in chunks and hashing them: one chunk size, one loop, for uploads, results and manifests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from loraq.storage.atomic import write_atomically

CHUNK_BYTES = 1 << 20


def read_chunks(handle: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """A binary file in chunks, so no file is ever held whole in memory."""
    while chunk := handle.read(size):
        yield chunk


def sha256_of(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return sha256_of(read_chunks(handle))


def remembered_sha256_file(path: Path, cache_dir: Path) -> str:
    """sha256_file, remembered in cache_dir under the file's identity: its real path, inode, size and
    modification time in nanoseconds. A base model's weights are hashed into every job's manifest; this
    reads them once per change instead of once per job (14 GB for a 7B model at fp16). Replacing or
    rewriting a file changes its identity; only an edit that keeps its size and restores its mtime would
    go unseen."""
    stat = path.stat()
    identity = f"{path.resolve()}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}"
    entry = cache_dir / hashlib.sha256(identity.encode()).hexdigest()
    try:
        remembered = entry.read_text().strip()
    except FileNotFoundError:
        remembered = ""
    if len(remembered) == 64:
        return remembered
    digest = sha256_file(path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(entry, digest.encode())  # workers may hash the same file at once
    return digest
