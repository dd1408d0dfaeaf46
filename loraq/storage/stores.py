"""The artifact store: datasets in, adapter bundles and checkpoints out. Local disk or S3.

Keys are made by the server (`new_storage_key`), never from a filename.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from loraq.core.ids import new_id
from loraq.core.settings import get_settings
from loraq.storage.hashing import CHUNK_BYTES, read_chunks

_KEY_PATTERN = re.compile(r"^[a-z]+/[A-Za-z0-9_-]+(\.[a-z0-9.]+)?$")


def new_storage_key(kind: str, suffix: str = "") -> str:
    """A fresh server-made key such as `datasets/blob_x1y2...jsonl`."""
    return f"{kind}/{new_id('blob_')}{suffix}"


def _checked(key: str) -> str:
    if not _KEY_PATTERN.match(key):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class ArtifactStore(Protocol):
    def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        """Store source's bytes under key; with move, source is the caller's to give up (it may be gone)."""
        ...

    def download(self, key: str, dest: Path) -> None: ...
    def local_path(self, key: str) -> Path | None:
        """Where the blob already is on this machine's disk, to read in place; None: download it."""
        ...

    def iter_bytes(self, key: str) -> Iterator[bytes]: ...
    def delete(self, key: str) -> None: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / _checked(key)).resolve()
        # The key pattern already forbids "..", this makes escaping the root impossible twice over.
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if move:
            # Scratch space and the store share LORAQ_HOME by default: a rename writes nothing again.
            try:
                source.replace(path)
                return
            except OSError as error:
                if error.errno != errno.EXDEV:  # another filesystem: copy, as without move
                    raise
        partial = path.with_name(path.name + ".partial")
        shutil.copyfile(source, partial)
        partial.replace(path)

    def download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as handle:
            yield from read_chunks(handle)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3  # lazy: only S3 deployments pay for it

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url)

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{_checked(key)}" if self.prefix else _checked(key)

    def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        self.client.upload_file(str(source), self.bucket, self._object(key))

    def download(self, key: str, dest: Path) -> None:
        self.client.download_file(self.bucket, self._object(key), str(dest))

    def local_path(self, key: str) -> Path | None:
        return None

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"]
        yield from body.iter_chunks(CHUNK_BYTES)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key))


def store_from_url(url: str, *, default_root: Path, endpoint_url: str | None = None) -> ArtifactStore:
    if not url:
        return LocalStore(default_root)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, endpoint_url)
    raise ValueError(f"LORAQ_STORAGE_URL must be file:// or s3://, not {url!r}")


@lru_cache
def get_store() -> ArtifactStore:
    settings = get_settings()
    return store_from_url(
        settings.storage_url, default_root=settings.home / "artifacts", endpoint_url=settings.s3_endpoint_url
    )
