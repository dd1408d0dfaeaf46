"""Typed dependencies: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from loraq.db import session_scope
from loraq.errors import Forbidden, Unauthorized
from loraq.keys import authenticate
from loraq.models import ApiKey
from loraq.settings import Settings, get_settings
from loraq.storage import ArtifactStore, get_store


def get_session() -> Iterator[Session]:
    """The request's unit of work: committed here and only here, before the response is sent."""
    with session_scope() as session:
        yield session


# scope="function": commit before the response goes out, so a failed commit is the caller's error.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def current_key(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> ApiKey:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key = authenticate(session, authorization.split(" ", 1)[1].strip())
    if key is None:
        raise Unauthorized("incorrect API key provided")
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def current_project_id(key: CurrentKey) -> str:
    return key.project_id


ProjectId = Annotated[str, Depends(current_project_id)]


def admin_key(key: CurrentKey) -> ApiKey:
    if not key.is_admin:
        raise Forbidden("this needs an admin API key")
    return key


AdminKey = Annotated[ApiKey, Depends(admin_key)]


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retry-safe creates: the same key and body return the first answer.",
    ),
]
