"""The artifact store, local and S3-compatible: server-made keys only, nothing outside the root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from loraq.storage.hashing import remembered_sha256_file, sha256_file
from loraq.storage.stores import ArtifactStore, LocalStore, new_storage_key, store_from_url

# What reading a key that holds nothing raises, on disk and on S3.
MISSING = (FileNotFoundError, ClientError)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield store_from_url("", default_root=tmp_path / "artifacts")
        return
    # moto stands in for the S3 service; the store code under test is the real one.
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="loraq-test")
        yield store_from_url("s3://loraq-test/prefix", default_root=tmp_path)


def test_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 3_000_000)
    key = new_storage_key("results", ".tar.gz")
    with pytest.raises(MISSING):
        store.download(key, tmp_path / "early.bin")
    store.put_file(key, source)
    assert b"".join(store.iter_bytes(key)) == source.read_bytes()
    store.download(key, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    store.delete(key)
    with pytest.raises(MISSING):
        b"".join(store.iter_bytes(key))
    with pytest.raises(MISSING):
        store.download(key, tmp_path / "late.bin")
    store.delete(key)  # deleting what is gone is not an error: a retried cleanup may do it twice


@pytest.mark.parametrize("key", ["../etc/passwd", "datasets/../../x", "/abs/path", "datasets/a/b", "x", ""])
def test_keys_that_could_escape_are_refused(store: ArtifactStore, key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage key"):
        store.download(key, tmp_path / "out")


def test_keys_are_made_by_the_server() -> None:
    first, second = new_storage_key("datasets", ".jsonl"), new_storage_key("datasets", ".jsonl")
    assert first != second and first.startswith("datasets/blob_") and first.endswith(".jsonl")


def test_local_store_writes_atomically(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    source = tmp_path / "s"
    source.write_bytes(b"data")
    key = new_storage_key("datasets")
    store.put_file(key, source)
    assert [p.name for p in (tmp_path / "root" / "datasets").iterdir()] == [key.split("/")[1]]


def test_a_moved_file_is_stored_without_being_written_again(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "spool.jsonl"
    source.write_bytes(b'{"text": "hi"}\n' * 1000)
    expected, inode = source.read_bytes(), source.stat().st_ino
    key = new_storage_key("datasets", ".jsonl")
    store.put_file(key, source, move=True)
    assert b"".join(store.iter_bytes(key)) == expected
    if isinstance(store, LocalStore):
        # Renamed into place on the same filesystem: the very file the upload was spooled to.
        assert store._path(key).stat().st_ino == inode and not source.exists()


def test_a_remembered_hash_is_read_once_per_file_identity(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 3_000_000)
    cache = tmp_path / "cache"
    first = remembered_sha256_file(weights, cache)
    assert first == sha256_file(weights)
    # Same size and the old mtime restored: the same identity, so the remembered digest, unread. This is
    # how the test knows the file was not hashed again; a real base model's files are never edited so.
    before = weights.stat()
    weights.write_bytes(b"b" * 3_000_000)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert remembered_sha256_file(weights, cache) == first
    # A rewrite the usual way (a new mtime), or a replaced file (a new inode): hashed again.
    weights.write_bytes(b"c" * 3_000_000)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert remembered_sha256_file(weights, cache) == sha256_file(weights) != first
    replacement = tmp_path / "new.safetensors"
    replacement.write_bytes(b"d" * 3_000_000)
    os.replace(replacement, weights)
    assert remembered_sha256_file(weights, cache) == sha256_file(weights)
    assert not list(cache.glob("*.partial"))
