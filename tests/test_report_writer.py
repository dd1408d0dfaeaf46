"""The worker's report writer: steps hand their numbers over and go on; the database gets them in batches,
every metrics point in order and the latest progress, with nothing lost when the run ends."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from loraq.core.db import get_engine, get_read_sessionmaker, get_sessionmaker
from loraq.core.settings import get_settings
from loraq.jobs import repository, runs
from loraq.jobs.states import Lease
from loraq.jobs.tables import JobEvent
from tests.helpers import migrated_engine, new_job
from tests.stack import wait_for
from worker.report_writer import ReportWriter


@pytest.fixture
def leased_job(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Session, Lease]]:
    """A claimed job in a database that the worker's own session_scope() writes to."""
    migrated_engine(database_url).dispose()
    monkeypatch.setenv("LORAQ_DATABASE_URL", database_url)
    for cached in (get_settings, get_engine, get_sessionmaker, get_read_sessionmaker):
        cached.cache_clear()
    with get_sessionmaker()() as session:
        lease = runs.claim(session, new_job(session), owner="w1", lease_seconds=30, max_attempts=3)
        session.commit()
        assert lease is not None
        yield session, lease
    get_engine().dispose()
    for cached in (get_settings, get_engine, get_sessionmaker, get_read_sessionmaker):
        cached.cache_clear()


def metrics_events(session: Session, lease: Lease) -> list[JobEvent]:
    """Oldest first."""
    project_id = repository.get_job_for_worker(session, lease.job_id).project_id
    events = repository.list_events(
        session, project_id=project_id, job_id=lease.job_id, after=None, limit=100
    )
    return [e for e in reversed(events.items) if e.type == "metrics"]


def metrics_steps(session: Session, lease: Lease) -> list[int]:
    return [e.data["step"] for e in metrics_events(session, lease) if e.data is not None]


def test_a_run_of_steps_is_written_in_one_commit_with_nothing_lost(
    leased_job: tuple[Session, Lease],
) -> None:
    session, lease = leased_job
    commits: list[object] = []
    event.listen(get_engine(), "commit", commits.append)
    with ReportWriter(lease, interval=3600) as writer:  # no timed flush: only the close writes
        for step in range(1, 41):
            writer.progress({"step": step, "total_steps": 40})
            writer.metrics(step, {"train_loss": 1.0 / step})
        assert commits == []  # the steps handed their numbers over without touching the database
    assert len(commits) == 1
    session.expire_all()
    assert metrics_steps(session, lease) == list(range(1, 41))
    assert repository.get_job_for_worker(session, lease.job_id).progress == {"step": 40, "total_steps": 40}


def test_the_writer_flushes_on_its_own_while_training_goes_on(leased_job: tuple[Session, Lease]) -> None:
    session, lease = leased_job
    with ReportWriter(lease, interval=0.05) as writer:
        writer.metrics(1, {"train_loss": 2.0})

        def written() -> bool:
            session.expire_all()
            return metrics_steps(session, lease) == [1]

        wait_for(written, timeout=30, what="the writer's own flush")


def test_a_cancelled_job_refuses_the_batch_and_the_writer_says_so(leased_job: tuple[Session, Lease]) -> None:
    session, lease = leased_job
    assert runs.cancel(session, lease.job_id)
    session.commit()
    with ReportWriter(lease, interval=3600) as writer:
        writer.metrics(1, {"train_loss": 2.0})
        assert not writer.flush()
        assert writer.refused.is_set()
    session.expire_all()
    assert metrics_steps(session, lease) == []


def test_numbers_json_cannot_hold_are_recorded_as_null_and_block_nothing(
    leased_job: tuple[Session, Lease],
) -> None:
    """fp16's loss scaler logs an infinite grad_norm on every overflow step, and a diverging run a NaN loss.
    JSON has neither (Postgres refuses the batch outright): they are stored as null, the step's message
    still says what they were, and the steps after them are recorded as usual."""
    session, lease = leased_job
    nan, inf = float("nan"), float("inf")
    with ReportWriter(lease, interval=3600) as writer:
        writer.progress({"step": 1, "train_loss": nan})
        writer.metrics(1, {"train_loss": nan, "grad_norm": inf, "nested": [{"x": -inf}, 1.5]})
        assert writer.flush()
        writer.progress({"step": 2, "train_loss": 2.0})
        writer.metrics(2, {"train_loss": 2.0, "grad_norm": 0.5})
    session.expire_all()
    by_step = {e.data["step"]: e for e in metrics_events(session, lease) if e.data is not None}
    assert by_step[1].data == {"step": 1, "train_loss": None, "grad_norm": None, "nested": [{"x": None}, 1.5]}
    assert "train_loss=nan" in by_step[1].message and "grad_norm=inf" in by_step[1].message
    assert by_step[2].data == {"step": 2, "train_loss": 2.0, "grad_norm": 0.5}
    assert repository.get_job_for_worker(session, lease.job_id).progress == {"step": 2, "train_loss": 2.0}


def test_an_older_sqlite_database_with_nan_in_a_json_column_still_reads(tmp_path: Path) -> None:
    """SQLite took NaN as JSON text before it was written as null: such a row still reads (and the API's
    JSON answers null for it)."""
    engine = migrated_engine(f"sqlite:///{tmp_path / 'older.db'}")
    with Session(engine) as session:
        lease = runs.claim(session, new_job(session), owner="w1", lease_seconds=30, max_attempts=3)
        assert lease is not None and runs.record_reports(session, lease, metrics=[(1, {"train_loss": 1.0})])
        session.commit()
        session.execute(text('UPDATE job_events SET data = \'{"step": 1, "train_loss": NaN}\''))
        session.commit()
        (older,) = metrics_events(session, lease)
        assert older.data is not None and math.isnan(older.data["train_loss"])
    engine.dispose()


def test_a_batch_the_database_refuses_for_good_does_not_hold_back_the_next(
    leased_job: tuple[Session, Lease],
) -> None:
    """A value the database will never take (Postgres refuses NUL in text; SQLite keeps it) is not retried
    forever at the head of the queue: the steps after it are recorded."""
    session, lease = leased_job
    with ReportWriter(lease, interval=3600) as writer:
        writer.metrics(1, {"bad\x00name": 1.0})
        writer.flush()
        writer.metrics(2, {"train_loss": 2.0})
        writer.progress({"step": 2})
    session.expire_all()
    assert metrics_steps(session, lease)[-1] == 2
    assert repository.get_job_for_worker(session, lease.job_id).progress == {"step": 2}
