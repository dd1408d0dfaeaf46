"""The pool pings a Postgres connection only when it has sat idle: one that a restart (here, its own
backend terminated) killed in the pool is replaced before a statement gets it, and a connection in
steady use costs no round trip before each request."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from loraq.core import db
from tests.conftest import fresh_postgres_database
from tests.helpers import POSTGRES_ADMIN_URL


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.3)  # the test waits this long, not a second
    with fresh_postgres_database("pool_ping") as url:
        engine = db.make_engine(url, pool_size=1)
        yield engine
        engine.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(pid: int) -> None:
    """What a database restart does to a pooled connection: its server process is gone."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    time.sleep(0.05)  # the backend exits


def test_a_connection_killed_while_idle_in_the_pool_is_replaced_unseen(engine: Engine) -> None:
    first = backend_pid(engine)
    terminate(first)
    time.sleep(0.4)  # idle past the threshold: checked before use
    assert backend_pid(engine) != first


def test_a_connection_in_steady_use_is_not_pinged(engine: Engine) -> None:
    backend_pid(engine)  # connected: the pool holds one connection
    pings: list[int] = []
    original = engine.dialect.do_ping

    def counted_ping(dbapi_connection: object) -> bool:
        pings.append(1)
        return bool(original(dbapi_connection))

    engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]
    for _ in range(20):
        backend_pid(engine)
    assert pings == []
    time.sleep(0.4)
    backend_pid(engine)
    assert pings == [1]


def test_a_connection_cut_within_the_threshold_fails_once_then_the_pool_recovers(engine: Engine) -> None:
    """The price of not pinging a busy connection: the one statement that meets the cut fails (the API
    answers it 503), and the pool replaces its connections for the next."""
    first = backend_pid(engine)
    terminate(first)
    with pytest.raises(DBAPIError) as failed:
        backend_pid(engine)
    assert failed.value.connection_invalidated
    assert backend_pid(engine) != first
