"""Typed dependencies: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from sqlalchemy.orm import Session

from loraq.core.db import session_scope
from loraq.core.errors import Forbidden, Unauthorized
from loraq.core.settings import Settings, get_settings
from loraq.core.text import ID_PATTERN
from loraq.projects.keys import authenticate
from loraq.projects.tables import ApiKey
from loraq.storage.stores import ArtifactStore, get_store


def get_session() -> Iterator[Session]:
    """The request's unit of work: committed here and only here, before the response is sent."""
    with session_scope() as session:
        yield session


# scope="function": commit before the response goes out, so a failed commit is the caller's error.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]

# An id in a path, and a list's `after` cursor: only what loraq's ids are made of reaches a query.
ObjectId = Annotated[str, Path(pattern=ID_PATTERN)]
Cursor = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="The id of the last item of the previous page.")
]

# Where AuthenticateFirst leaves the request's key in the ASGI scope's state.
API_KEY_STATE = "loraq_api_key"


def authenticate_bearer(authorization: str | None) -> ApiKey:
    """The live key an `Authorization: Bearer <key>` header names; Unauthorized otherwise."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    with session_scope() as session:
        key = authenticate(session, authorization.split(" ", 1)[1].strip())
    if key is None:
        raise Unauthorized("incorrect API key provided")
    return key


def current_key(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="Bearer <API key>; checked before any of the body is read.")
    ] = None,
) -> ApiKey:
    # AuthenticateFirst has already checked every /v1 request's key; a route it does not guard checks here.
    key = request.scope.get("state", {}).get(API_KEY_STATE)
    return key if isinstance(key, ApiKey) else authenticate_bearer(authorization)


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
