"""Reading files in chunks and hashing them: one chunk size, one loop, for uploads, results and manifests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

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
