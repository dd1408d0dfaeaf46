"""Fixtures: a tiny demo model, databases, and two real deployments (embedded default; Postgres + Redis)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.helpers import POSTGRES_ADMIN_URL
from tests.services import private_redis
from tests.smollm2_cache import cached_smollm2
from tests.stack import Stack, start_stack

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.demo_model import ensure_demo_model

    return ensure_demo_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct converted from its GGUF, once per checkout (cached under var/test-cache)."""
    return cached_smollm2()


@contextmanager
def fresh_postgres_database(purpose: str) -> Iterator[str]:
    """A new, uniquely named database, dropped afterwards: tests never share tables by accident."""
    name = f"loraq_{purpose}_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The Postgres deployment's database."""
    with fresh_postgres_database("stack") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for one test, on SQLite and then on Postgres, as a SQLAlchemy URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    with fresh_postgres_database("unit") as url:
        yield url.replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Postgres deployment's broker: a redis-server of the suite's own, so nothing shared is flushed."""
    with private_redis() as server:
        yield server.url


@pytest.fixture(scope="session", params=["embedded", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_model: Path
) -> Iterator[Stack]:
    """A running API and worker: on the embedded default, then on Postgres + Redis."""
    env: dict[str, str] = {}
    if request.param == "postgres":
        env = {
            "LORAQ_DATABASE_URL": request.getfixturevalue("postgres_database"),
            "LORAQ_BROKER_URL": request.getfixturevalue("redis_url"),
        }
    stack = start_stack(request.param, tmp_path_factory.mktemp(request.param), demo_model, env)
    yield stack
    stack.stop()
