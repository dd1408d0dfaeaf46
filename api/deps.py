"""Typed dependencies: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from loraq.core.db import end_session, get_read_sessionmaker, get_sessionmaker
from loraq.core.errors import Forbidden, Unauthorized
from loraq.core.settings import Settings, get_settings
from loraq.core.text import ID_PATTERN
from loraq.projects.keys import CheckedKey, authenticate, recently_checked
from loraq.storage.stores import ArtifactStore, get_store

# Requests that only read: their session runs in autocommit mode and refuses to write.
READ_METHODS = frozenset({"GET", "HEAD"})

# Where AuthenticateFirst leaves the request's key, and the read session it checked the key with, in the
# ASGI scope's state: a read request looks its key and its data up on one connection.
API_KEY_STATE = "loraq_api_key"
READ_SESSION_STATE = "loraq_read_session"


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's unit of work: committed here and only here, before the response is sent.

    A GET or HEAD reads in autocommit mode, on the session its key was checked with. Async, so that
    making a session (no I/O: it connects on first use, in the route's thread) costs no thread hop.
    """
    if request.method in READ_METHODS:
        session = read_session(request)
        try:
            yield session
        finally:
            # Nothing to commit or roll back in autocommit mode: the connection goes back to the pool now,
            # before a long download streams.
            session.close()
        return
    session = get_sessionmaker()()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(end_session, session, commit=False)
        raise
    await run_in_threadpool(end_session, session, commit=True)


def read_session(request: Request) -> Session:
    """For a GET route that ends its session itself, in its thread: the session its key was checked with,
    or a new one. Not a dependency: entering and leaving one costs the event loop more than the read."""
    return request.scope.get("state", {}).pop(READ_SESSION_STATE, None) or get_read_sessionmaker()()


async def settings_dependency() -> Settings:
    return get_settings()


async def store_dependency() -> ArtifactStore:
    return get_store()


# scope="function": commit before the response goes out, so a failed commit is the caller's error.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
# Async: a cached value or a small object, not worth a hop through the thread pool.
SettingsDep = Annotated[Settings, Depends(settings_dependency)]
StoreDep = Annotated[ArtifactStore, Depends(store_dependency)]

# An id in a path, and a list's `after` cursor: only what loraq's ids are made of reaches a query.
ObjectId = Annotated[str, Path(pattern=ID_PATTERN)]
Cursor = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="The id of the last item of the previous page.")
]


def _bearer_secret(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization.split(" ", 1)[1].strip()


def recently_checked_bearer(authorization: str | None) -> CheckedKey | None:
    """The key an `Authorization` header names if this process checked it a moment ago; no I/O."""
    secret = _bearer_secret(authorization)
    return recently_checked(secret) if secret else None


def authenticate_bearer(session: Session, authorization: str | None) -> CheckedKey:
    """The live key an `Authorization: Bearer <key>` header names; Unauthorized otherwise."""
    secret = _bearer_secret(authorization)
    if not secret:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key = authenticate(session, secret)
    if key is None:
        raise Unauthorized("incorrect API key provided")
    return key


def _authenticate_alone(authorization: str | None) -> CheckedKey:
    with get_read_sessionmaker()() as session:
        return authenticate_bearer(session, authorization)


async def current_key(request: Request) -> CheckedKey:
    """The caller's checked key. A plain request, not a `Header` parameter: FastAPI would extract and
    validate the header on every request (a few percent of a GET job's CPU) for a key almost always known
    already. The OpenAPI document names the scheme instead (api/app.py: document_api_keys)."""
    # AuthenticateFirst has already checked every /v1 request's key; a route it does not guard checks here.
    key = request.scope.get("state", {}).get(API_KEY_STATE)
    if isinstance(key, CheckedKey):
        return key
    authorization = request.headers.get("authorization")
    if (recent := recently_checked_bearer(authorization)) is not None:
        return recent
    return await run_in_threadpool(_authenticate_alone, authorization)


CurrentKey = Annotated[CheckedKey, Depends(current_key)]

# How the OpenAPI document says an operation takes a key: every /v1 one (api/app.py), and a route elsewhere
# that asks for one names it in its `openapi_extra`.
API_KEY_SCHEME = {"APIKey": {"type": "http", "scheme": "bearer", "description": "An API key: `lq-...`."}}
TAKES_API_KEY: dict[str, Any] = {"security": [{"APIKey": []}]}


async def current_project_id(request: Request) -> str:
    # current_key called, not depended on: one dependency for FastAPI to solve per request, not two.
    return (await current_key(request)).project_id


ProjectId = Annotated[str, Depends(current_project_id)]


async def admin_key(key: CurrentKey) -> CheckedKey:
    if not key.is_admin:
        raise Forbidden("this needs an admin API key")
    return key


AdminKey = Annotated[CheckedKey, Depends(admin_key)]


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retry-safe creates: the same key and body return the first answer.",
    ),
]
