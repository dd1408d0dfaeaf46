"""A read (GET) checks its key and reads its data on one pooled connection in autocommit mode: no BEGIN
and COMMIT round trips, half of a GET's database time. A write keeps its transaction. A read's session
refuses to write, so a GET that starts writing fails in tests instead of committing half a change."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from api.app import create_app
from loraq.core.db import get_engine, get_read_sessionmaker, get_sessionmaker, session_scope
from loraq.core.settings import get_settings
from loraq.jobs import repository
from loraq.projects.keys import ensure_admin_key
from loraq.projects.tables import Project
from tests.helpers import migrated_engine, new_job

CACHED = (get_settings, get_engine, get_sessionmaker, get_read_sessionmaker)


@pytest.fixture
def app_in_process(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FastAPI, str]]:
    """The API app in this process (so its engine's events can be watched) and its admin key."""
    migrated_engine(database_url).dispose()
    monkeypatch.setenv("LORAQ_HOME", str(tmp_path))
    monkeypatch.setenv("LORAQ_DATABASE_URL", database_url)
    for cached in CACHED:
        cached.cache_clear()
    with session_scope() as session:
        key = ensure_admin_key(session, tmp_path / "admin.key")
    assert key is not None
    yield create_app(), key
    get_engine().dispose()
    for cached in CACHED:
        cached.cache_clear()


def _watch(engine: Engine) -> tuple[list[int], list[bool]]:
    """Pool checkouts, and for each statement whether it ran in autocommit mode."""
    checkouts: list[int] = []
    autocommit: list[bool] = []
    event.listen(engine.pool, "checkout", lambda *_: checkouts.append(1))

    def before_execute(connection: Any, *_: Any) -> None:
        autocommit.append(connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    event.listen(engine, "before_cursor_execute", before_execute)
    return checkouts, autocommit


async def _request(app: FastAPI, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://loraq", headers={"Authorization": f"Bearer {key}"}
    ) as client:
        return await client.request(method, path, **kwargs)


def test_a_read_uses_one_connection_in_autocommit_mode(app_in_process: tuple[FastAPI, str]) -> None:
    app, key = app_in_process
    checkouts, autocommit = _watch(get_engine())

    answer = asyncio.run(_request(app, key, "GET", "/v1/me"))

    assert answer.status_code == 200, answer.text
    assert answer.json()["project_name"] == "default"
    assert len(checkouts) == 1  # the key's lookup and its project's on the same connection
    assert len(autocommit) >= 2 and all(autocommit)


def test_the_app_keeps_what_it_starts_with_out_of_the_collectors_way(
    app_in_process: tuple[FastAPI, str],
) -> None:
    """A full collection walked every object of the app (routes, schemas, mappers) while requests waited:
    they are frozen once it starts, and handed back at shutdown."""
    app, _ = app_in_process

    async def frozen_while_serving() -> int:
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count()

    assert asyncio.run(frozen_while_serving()) > 100_000
    assert gc.get_freeze_count() == 0


def test_a_write_keeps_its_transaction(app_in_process: tuple[FastAPI, str]) -> None:
    app, key = app_in_process
    checkouts, autocommit = _watch(get_engine())

    answer = asyncio.run(_request(app, key, "POST", "/v1/projects", json={"name": "read-path"}))

    assert answer.status_code == 200, answer.text
    # The key is checked on a connection let go at once (an upload's body may stream for minutes); the
    # route's own work is one transaction.
    assert len(checkouts) == 2
    assert autocommit[0] is True and autocommit[-1] is False
    with session_scope() as session:
        assert session.query(Project).filter_by(id=answer.json()["id"]).count() == 1


def test_a_read_session_refuses_to_write(app_in_process: tuple[FastAPI, str]) -> None:
    with get_read_sessionmaker()() as session:
        session.add(Project(name="never-stored"))
        with pytest.raises(RuntimeError, match="read-only"):
            session.flush()
    with session_scope() as session:
        assert session.query(Project).filter_by(name="never-stored").count() == 0


def test_reading_jobs_leaves_the_base_models_answers_in_the_database(database_url: str) -> None:
    """A job's base_samples (the base model's answers to its samples) are in no API answer: reading a job or
    a page of jobs does not fetch them; a worker resuming the job still gets them."""
    engine = migrated_engine(database_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _k, statement, *_: statements.append(statement))
    answers = [{"input": "Hi", "reference": None, "base_output": "x" * 2000}]
    with Session(engine) as session:
        job_id = new_job(session, project_name="default")
        project_id = repository.get_job_for_worker(session, job_id).project_id
        repository.get_job_for_worker(session, job_id).base_samples = answers
        session.commit()
    with Session(engine) as session:
        statements.clear()
        repository.get_job(session, project_id=project_id, job_id=job_id)
        repository.list_jobs(session, project_id=project_id, status=None, metadata={}, after=None, limit=20)
        assert statements and not any("base_samples" in statement for statement in statements)
        assert repository.get_job_for_worker(session, job_id).base_samples == answers
    engine.dispose()
