"""Engine and sessions: one engine per process, the one commit point, and after-commit hooks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from loraq.core.json_text import from_json, to_json
from loraq.core.settings import get_settings

# Named constraints so Alembic migrations are identical on SQLite and Postgres.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; busy_timeout waits out the other's lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# A connection back in the pool for less than this was answering a moment ago and is used as it is; one
# idle for longer is pinged first, so that connections a database restart killed while they sat in the
# pool are replaced before a request gets one. pool_pre_ping would ping on every checkout: a round trip
# per request, 0.9x the API's GETs per second under load (docs/benchmarks.md). A restart within the last
# second fails the statements of the connections it cut (a 503; the pool then replaces them all).
PING_AFTER_IDLE_SECONDS = 1.0
_CHECKED_IN_AT = "loraq_checked_in_at"


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info[_CHECKED_IN_AT] = time.monotonic()


def make_engine(url: str, *, pool_size: int = 5, pool_timeout: float = 5) -> Engine:
    """An engine whose pool makes a request wait at most pool_timeout for a connection (then PoolTimeout,
    a 503), never the 30 s SQLAlchemy defaults to: the wait that turned overload into a stall."""
    pool = {"pool_size": pool_size, "max_overflow": pool_size // 4, "pool_timeout": pool_timeout}
    # JSON columns: NaN and Infinity written as null (Postgres refuses them), read with orjson.
    json_columns = {"json_serializer": to_json, "json_deserializer": from_json}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool, **json_columns
        )
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    # A short connect timeout turns an outage into a quick error instead of a hung request.
    engine = create_engine(url, connect_args={"connect_timeout": 3}, **pool, **json_columns)
    event.listen(engine, "checkin", _note_checkin)

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        # None: a new connection, which has just answered its connect.
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)  # SELECT 1, outside any transaction
        except Exception as error:
            # The pool replaces this connection, and every other that was in it then, and tries again.
            raise InvalidatePoolError(f"a pooled connection did not answer a ping: {error}") from error

    return engine


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if not settings.database_url:
        settings.home.mkdir(parents=True, exist_ok=True)
    return make_engine(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
    )


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@lru_cache
def get_read_sessionmaker() -> sessionmaker[Session]:
    """Sessions that only read, in autocommit mode: each statement runs alone, with no BEGIN and COMMIT
    round trips around it (half a GET's database time, measured). On Postgres, at READ COMMITTED (its
    default, and loraq's), a transaction would give a series of reads no more consistency than this; on
    SQLite each statement reads the latest commit."""
    readers = sessionmaker(
        bind=get_engine().execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )
    event.listen(readers, "before_flush", _refuse_writes)
    return readers


def _refuse_writes(_session: Session, _context: Any, _instances: Any) -> None:
    # In autocommit mode each write would commit alone: a half-done change, never rolled back.
    raise RuntimeError("a read-only session was asked to write")


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work outside a request (worker, startup): commit on success, roll back on error."""
    session = get_sessionmaker()()
    try:
        yield session
    except BaseException:
        end_session(session, commit=False)
        raise
    end_session(session, commit=True)


def end_session(session: Session, *, commit: bool) -> None:
    """Commit (roll back after an error) and close: the one commit point, for session_scope and for an
    API request's session (api/deps.py), which opens on the event loop and ends in the thread pool."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_AFTER_COMMIT = "loraq_after_commit"
_AFTER_ROLLBACK = "loraq_after_rollback"
_LISTENING = "loraq_listening"


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once this session's transaction commits; forget it if it rolls back.

    For work outside the database that must follow the commit: publishing a job, deleting a blob.
    """
    _queue(session)[0].append(callback)


def after_rollback(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` if this session's transaction rolls back; forget it once it commits.

    For undoing work outside the database that assumed the commit: a blob whose row never landed.
    """
    _queue(session)[1].append(callback)


def _queue(session: Session) -> tuple[list[Callable[[], None]], list[Callable[[], None]]]:
    if not session.info.get(_LISTENING):
        # Listen for the session's whole life: each transaction's callbacks are popped when it ends.
        session.info[_LISTENING] = True
        event.listen(session, "after_commit", _run_after_commit)
        event.listen(session, "after_rollback", _run_after_rollback)
    return session.info.setdefault(_AFTER_COMMIT, []), session.info.setdefault(_AFTER_ROLLBACK, [])


def _run_after_commit(session: Session) -> None:
    callbacks = session.info.pop(_AFTER_COMMIT, [])
    session.info.pop(_AFTER_ROLLBACK, None)
    for callback in callbacks:
        callback()


def _run_after_rollback(session: Session) -> None:
    callbacks = session.info.pop(_AFTER_ROLLBACK, [])
    session.info.pop(_AFTER_COMMIT, None)
    for callback in callbacks:
        callback()
