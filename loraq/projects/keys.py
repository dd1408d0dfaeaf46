"""API keys: shown once, stored only as a sha256 hash; a key checked a moment ago is trusted for a few
seconds without asking the database again."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from loraq.core.db import after_commit
from loraq.core.settings import get_settings
from loraq.projects import repository
from loraq.projects.tables import ApiKey, Project

KEY_PREFIX = "lq-"


@dataclass(frozen=True)
class CheckedKey:
    """A live key as a request sees it once checked: the project it speaks for, and its rights."""

    id: str
    project_id: str
    is_admin: bool

    @classmethod
    def of(cls, key: ApiKey) -> CheckedKey:
        return cls(id=key.id, project_id=key.project_id, is_admin=key.is_admin)


class RecentKeys:
    """Keys checked in the last `ttl` seconds, by hash. Most requests come with a key checked a moment
    ago (a dashboard polls every 2 s): they skip its query, and the API its trip through the thread pool.

    A revocation forgets its key here once it commits, so the process that revoked a key refuses it at
    once, and so do its sibling API processes when they share a revocation counter (`share_revocations`):
    each empties its cache when the count moves. Another machine trusts the key for at most `ttl` more
    seconds.
    """

    def __init__(self, ttl: float, capacity: int = 4096, shared: SharedCounter | None = None) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._keys: OrderedDict[str, tuple[float, CheckedKey]] = OrderedDict()
        self._lock = threading.Lock()  # the event loop reads; request threads write
        # Bumped by every revocation: a check that began before one may have read the key as live.
        self._revocations = shared or _ProcessCounter()
        self._emptied_at = self.revocations

    @property
    def revocations(self) -> int:
        return self._revocations.value

    def get(self, key_hash: str) -> CheckedKey | None:
        with self._lock:
            if (revocations := self.revocations) != self._emptied_at:
                self._keys.clear()  # a sibling process revoked a key; which one, it does not say
                self._emptied_at = revocations
            entry = self._keys.get(key_hash)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._keys[key_hash]
                return None
            return entry[1]

    def remember(self, key_hash: str, key: CheckedKey, *, revocations_before: int) -> None:
        with self._lock:
            if self.ttl <= 0 or revocations_before != self.revocations:
                return
            self._keys[key_hash] = (time.monotonic() + self.ttl, key)
            self._keys.move_to_end(key_hash)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)

    def forget(self, key_hash: str) -> None:
        with self._lock:
            self._revocations.increment()
            self._keys.pop(key_hash, None)


class SharedCounter(Protocol):
    """A count the API processes of one machine share (api/serving.py makes it in shared memory)."""

    @property
    def value(self) -> int: ...

    def increment(self) -> None: ...


class _ProcessCounter:
    """The count of a process alone."""

    def __init__(self) -> None:
        self.value = 0

    def increment(self) -> None:
        self.value += 1


_shared_revocations: SharedCounter | None = None


def share_revocations(counter: SharedCounter) -> None:
    """Before the first request: count revocations in `counter`, which this process's sibling API processes
    share, so that a key one of them revokes is refused by all at once."""
    global _shared_revocations
    _shared_revocations = counter
    recent_keys.cache_clear()


@lru_cache
def recent_keys() -> RecentKeys:
    return RecentKeys(get_settings().api_key_cache_seconds, shared=_shared_revocations)


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def create_api_key(session: Session, *, project_id: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """Make a key for a project; the raw secret is returned once and never stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(24)
    key = ApiKey(project_id=project_id, key_hash=hash_key(raw), display_prefix=raw[:8], is_admin=is_admin)
    repository.add(session, key)
    return key, raw


def recently_checked(raw_key: str) -> CheckedKey | None:
    """The key if this process checked it in the last few seconds; no I/O, so safe on an event loop."""
    return recent_keys().get(hash_key(raw_key))


def authenticate(session: Session, raw_key: str) -> CheckedKey | None:
    """The live key `raw_key` is, or None."""
    key_hash = hash_key(raw_key)
    recent = recent_keys()
    if (checked := recent.get(key_hash)) is not None:
        return checked
    revocations_before = recent.revocations
    key = repository.live_key_by_hash(session, key_hash)
    if key is None:
        return None
    checked = CheckedKey.of(key)
    recent.remember(key_hash, checked, revocations_before=revocations_before)
    return checked


def revoke(session: Session, key: ApiKey) -> None:
    """Revoke `key`; this process stops trusting it as soon as the revocation commits."""
    if key.revoked_at is None:
        key.revoked_at = int(time.time())
    after_commit(session, lambda: recent_keys().forget(key.key_hash))


def ensure_admin_key(session: Session, key_path: Path) -> str | None:
    """On first start, make the default project and an admin key, written to key_path (mode 0600).

    Returns the new raw key, or None when key_path already holds a live key.
    """
    if key_path.exists() and authenticate(session, key_path.read_text().strip()) is not None:
        return None
    project = repository.find_project_by_name(session, "default")
    if project is None:
        project = Project(name="default")
        repository.add(session, project)
    _, raw = create_api_key(session, project_id=project.id, is_admin=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(raw + "\n")
    return raw
