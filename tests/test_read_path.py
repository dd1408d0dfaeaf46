"""A read (GET) checks its key and reads its data on one pooled connection in autocommit mode: no BEGIN
and COMMIT round trips, half of a GET's database time. A write keeps its transaction. A read's session
refuses to write, so a GET that starts writing fails in tests instead of committing half a change. A key
checked a moment ago is not checked again, and a route makes one trip through the thread pool."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from api.app import create_app
from api.schemas.jobs import JobPublic
from api.serving import Revocations
from loraq.core.db import get_engine, get_read_sessionmaker, get_sessionmaker, session_scope
from loraq.core.settings import get_settings
from loraq.jobs import repository
from loraq.jobs.spec import JobCreate
from loraq.jobs.states import JobStatus
from loraq.projects.keys import CheckedKey, RecentKeys, ensure_admin_key, recent_keys
from loraq.projects.tables import Project
from tests.helpers import migrated_engine, new_job

CACHED = (get_settings, get_engine, get_sessionmaker, get_read_sessionmaker, recent_keys)


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


def _count_trips_and_statements(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """From now on: each trip through the thread pool (the function's name), and each SQL statement."""
    trips: list[str] = []
    statements: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(function: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(function, "__name__", repr(function)))
        return await run_sync(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    event.listen(get_engine(), "before_cursor_execute", lambda _c, _k, sql, *_: statements.append(sql))
    return trips, statements


def test_a_read_uses_one_connection_in_autocommit_mode(app_in_process: tuple[FastAPI, str]) -> None:
    app, key = app_in_process
    checkouts, autocommit = _watch(get_engine())

    answer = asyncio.run(_request(app, key, "GET", "/v1/me"))

    assert answer.status_code == 200, answer.text
    assert answer.json()["project_name"] == "default"
    assert len(checkouts) == 1  # the key's lookup and its project's on the same connection
    assert len(autocommit) >= 2 and all(autocommit)


def test_a_key_checked_a_moment_ago_costs_no_query_and_one_trip_through_the_pool(
    app_in_process: tuple[FastAPI, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard and the SDK poll with one key: after its first check, a read makes one query (its own)
    and one trip through the thread pool (the route; its answer is validated on the event loop)."""
    app, key = app_in_process
    trips, statements = _count_trips_and_statements(monkeypatch)

    first = asyncio.run(_request(app, key, "GET", "/v1/me"))
    assert first.status_code == 200, first.text
    assert len(trips) == 2 and len(statements) == 2, (trips, statements)  # the key's check, the route

    trips.clear()
    statements.clear()
    again = asyncio.run(_request(app, key, "GET", "/v1/me"))
    assert again.json() == first.json()
    assert len(trips) == 1, trips
    assert len(statements) == 1 and "api_keys" not in statements[0], statements

    assert asyncio.run(_request(app, "lq-not-a-key", "GET", "/v1/me")).status_code == 401


def test_a_check_that_began_before_a_revocation_is_not_remembered() -> None:
    """A request reads the key as live, the key's revocation commits and is forgotten here, then the
    request would remember the live key it read: it must not, or the revoked key would pass for a while."""
    recent = RecentKeys(ttl=60)
    live = CheckedKey(id="key-1", project_id="project-1", is_admin=False)
    revocations_before = recent.revocations  # the request starts its query
    recent.forget("hash-1")  # the revocation commits meanwhile
    recent.remember("hash-1", live, revocations_before=revocations_before)
    assert recent.get("hash-1") is None
    recent.remember("hash-1", live, revocations_before=recent.revocations)
    assert recent.get("hash-1") == live


def test_a_key_revoked_by_a_sibling_process_is_forgotten_with_every_other() -> None:
    """The API's processes share a count of revocations (api/serving.py): when it moves, each empties its
    cache, since it cannot tell which key went; a check that began before it is not remembered either."""
    shared = Revocations(multiprocessing.get_context("spawn"))
    revoking, sibling = RecentKeys(ttl=60, shared=shared), RecentKeys(ttl=60, shared=shared)
    leaked = CheckedKey(id="key-1", project_id="project-1", is_admin=False)
    other = CheckedKey(id="key-2", project_id="project-2", is_admin=False)
    for recent in (revoking, sibling):
        recent.remember("hash-1", leaked, revocations_before=recent.revocations)
    sibling.remember("hash-2", other, revocations_before=sibling.revocations)
    checking_before = sibling.revocations  # a request on the sibling starts its query
    revoking.forget("hash-1")
    assert sibling.get("hash-1") is None and sibling.get("hash-2") is None
    sibling.remember("hash-1", leaked, revocations_before=checking_before)
    assert sibling.get("hash-1") is None
    sibling.remember("hash-2", other, revocations_before=sibling.revocations)  # checked again, live
    assert sibling.get("hash-2") == other


def test_a_remembered_key_expires_after_its_time() -> None:
    recent = RecentKeys(ttl=0.2)
    live = CheckedKey(id="key-1", project_id="project-1", is_admin=True)
    recent.remember("hash-1", live, revocations_before=recent.revocations)
    assert recent.get("hash-1") == live
    time.sleep(0.3)
    assert recent.get("hash-1") is None
    never = RecentKeys(ttl=0)  # LORAQ_API_KEY_CACHE_SECONDS=0: every request checks
    never.remember("hash-1", live, revocations_before=never.revocations)
    assert never.get("hash-1") is None


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
        repository.read_job(session, project_id=project_id, job_id=job_id)
        repository.list_jobs(session, project_id=project_id, status=None, metadata={}, after=None, limit=20)
        assert statements and not any("base_samples" in statement for statement in statements)
        assert repository.get_job_for_worker(session, job_id).base_samples == answers
    engine.dispose()


def _job_as_the_api_would_store_it(session: Session, *, status: JobStatus, **fields: Any) -> str:
    """A job row with a valid spec, in the default project (the admin key's)."""
    spec = JobCreate.model_validate({"model": "loraq-tiny-demo", "training_file": "file-x"})
    assert spec.method is not None
    return new_job(
        session,
        project_name="default",
        model="loraq-tiny-demo",
        base_model="loraq-tiny-demo",
        seed=7,
        method=spec.method.model_dump(mode="json"),
        hyperparameters=spec.requested_hyperparameters.resolve(n_examples=10).model_dump(mode="json"),
        adapter=spec.adapter.model_dump(mode="json"),
        export=spec.export.model_dump(mode="json"),
        status=status.value,
        metadata_={"team": "search"},
        **fields,
    )


def test_the_polled_job_is_answered_as_the_list_answers_it_in_one_trip_and_one_query(
    app_in_process: tuple[FastAPI, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET job and the list, which clients poll, read rows of columns and write their JSON in their thread,
    past FastAPI's session dependency and response model. They must agree with each other, field for field
    (the derived `estimated_finish` and `status_details` and the renamed ones included), and with the
    ORM's `Job` as create and cancel answer it."""
    app, key = app_in_process
    with session_scope() as session:
        running = _job_as_the_api_would_store_it(
            session,
            status=JobStatus.RUNNING,
            progress={"step": 3, "total_steps": 9, "eta_seconds": 60.5, "reported_at": 1_800_000_000.25},
            lease_expires_at=time.time() + 600,
        )
        queued = _job_as_the_api_would_store_it(session, status=JobStatus.QUEUED)
    asyncio.run(_request(app, key, "GET", "/v1/me"))  # the key checked: the requests below skip its query

    trips, statements = _count_trips_and_statements(monkeypatch)
    listed = {
        job["id"]: job
        for job in asyncio.run(_request(app, key, "GET", "/v1/fine_tuning/jobs")).json()["data"]
    }
    # The page's query, and the workers' for the queued job's status_details.
    assert len(trips) == 1 and len(statements) == 2, (trips, statements)
    with session_scope() as session:
        as_created = JobPublic.model_validate(repository.get_job_for_worker(session, running))
    assert as_created.model_dump(mode="json") == listed[running]
    trips.clear()
    statements.clear()

    answer = asyncio.run(_request(app, key, "GET", f"/v1/fine_tuning/jobs/{running}"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == listed[running]
    assert answer.json()["estimated_finish"] == 1_800_000_060
    assert answer.json()["organization_id"] and answer.json()["metadata"] == {"team": "search"}
    assert len(trips) == 1 and len(statements) == 1, (trips, statements)
    assert get_engine().pool.checkedout() == 0  # its session closed in its thread

    # A queued job with no worker alive: the API says why it is not moving, on both paths.
    waiting = asyncio.run(_request(app, key, "GET", f"/v1/fine_tuning/jobs/{queued}")).json()
    assert waiting == listed[queued]
    assert waiting["status_details"] == "waiting for a worker: no worker is alive"
    assert waiting["estimated_finish"] is None

    missing = asyncio.run(_request(app, key, "GET", "/v1/fine_tuning/jobs/ftjob-missing"))
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "fine_tuning_job_id"
    assert get_engine().pool.checkedout() == 0
