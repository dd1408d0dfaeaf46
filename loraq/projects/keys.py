"""API keys: shown once, stored only as a sha256 hash."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from sqlalchemy.orm import Session

from loraq.projects import repository
from loraq.projects.tables import ApiKey, Project

KEY_PREFIX = "lq-"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def create_api_key(session: Session, *, project_id: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """Make a key for a project; the raw secret is returned once and never stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(24)
    key = ApiKey(project_id=project_id, key_hash=hash_key(raw), display_prefix=raw[:8], is_admin=is_admin)
    repository.add(session, key)
    return key, raw


def authenticate(session: Session, raw_key: str) -> ApiKey | None:
    return repository.live_key_by_hash(session, hash_key(raw_key))


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
