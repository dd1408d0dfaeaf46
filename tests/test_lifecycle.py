"""The job state machine against a real database: claims, leases, cancels and finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from loraq.jobs import runs
from loraq.jobs.states import Lease
from loraq.jobs.tables import Job
from loraq.projects.tables import Project
from tests.helpers import migrated_engine, new_job


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    engine = migrated_engine(database_url)
    with sessionmaker(bind=engine)() as session:
        yield session
        session.rollback()
    engine.dispose()


def status(session: Session, job_id: str) -> str:
    return str(session.scalar(select(Job.status).where(Job.id == job_id)))


def claim(session: Session, job_id: str, owner: str, max_attempts: int = 3) -> Lease | None:
    return runs.claim(session, job_id, owner=owner, lease_seconds=30, max_attempts=max_attempts)


def expire_lease(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=time.time() - 1))


def test_only_one_worker_wins_a_claim(session: Session) -> None:
    job_id = new_job(session)
    first = claim(session, job_id, "a")
    assert first is not None and status(session, job_id) == "running"
    assert claim(session, job_id, "b") is None, "a live lease refuses a second claim"


def test_expired_lease_is_claimed_again_and_the_old_owner_loses(session: Session) -> None:
    job_id = new_job(session)
    old = claim(session, job_id, "a")
    assert old is not None
    expire_lease(session, job_id)
    new = claim(session, job_id, "b")
    assert new is not None
    assert not runs.renew(session, old, lease_seconds=30)
    assert not runs.succeed(session, old, result_files=["x"], fine_tuned_model="m", trained_tokens=1)
    assert runs.succeed(session, new, result_files=["x"], fine_tuned_model="m", trained_tokens=1)
    assert status(session, job_id) == "succeeded"


def test_cancel_takes_the_lease_away(session: Session) -> None:
    job_id = new_job(session)
    lease = claim(session, job_id, "a")
    assert lease is not None
    assert runs.cancel(session, job_id)
    assert not runs.holds(session, lease)
    assert not runs.renew(session, lease, lease_seconds=30)
    assert not runs.succeed(session, lease, result_files=[], fine_tuned_model="m", trained_tokens=0)
    assert status(session, job_id) == "cancelled"
    assert not runs.cancel(session, job_id), "terminal states are final"


def test_a_job_that_keeps_killing_its_worker_fails(session: Session) -> None:
    job_id = new_job(session)
    for owner in ("a", "b"):
        assert claim(session, job_id, owner, max_attempts=2) is not None
        expire_lease(session, job_id)
    assert claim(session, job_id, "c", max_attempts=2) is None
    assert status(session, job_id) == "failed"
    job = session.scalars(select(Job).where(Job.id == job_id)).one()
    assert job.error is not None and "2 times" in job.error["message"]


def test_finished_jobs_are_never_claimed(session: Session) -> None:
    job_id = new_job(session)
    lease = claim(session, job_id, "a")
    assert lease is not None
    assert runs.fail(session, job_id, "boom", code="training_error", lease=lease)
    assert claim(session, job_id, "b") is None
    assert status(session, job_id) == "failed"


def test_a_checkpoint_resets_the_crash_budget(session: Session) -> None:
    """Deaths count only in a row without progress: a long job may restart more often than max_attempts."""
    job_id = new_job(session)
    for owner in ("a", "b", "c", "d"):
        lease = claim(session, job_id, owner, max_attempts=2)
        assert lease is not None, owner
        runs.add_checkpoint(
            session,
            lease,
            step=1,
            metrics={},
            storage_key="checkpoints/blob_x",
            resume_bytes=1,
            keep_bundles=3,
        )
        expire_lease(session, job_id)
    assert status(session, job_id) == "running"


def test_running_limit_keeps_jobs_queued(session: Session) -> None:
    first, second = new_job(session), new_job(session)
    session.execute(update(Project).values(max_running_jobs=1))
    assert claim(session, first, "a") is not None
    assert claim(session, second, "b") is None
    assert status(session, second) == "queued"
    expire_lease(session, first)
    assert claim(session, first, "c") is not None, "a reclaim does not count the job against itself"
