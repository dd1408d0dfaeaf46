"""Fixtures: a tiny demo model, and two real deployments (embedded default; Postgres + Redis)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.stack import Stack

POSTGRES_ADMIN_URL = os.environ.get("LORAQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LORAQ_TEST_REDIS", "redis://127.0.0.1:6379/11")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Fast leases and reconciles so fault tests finish in seconds, not minutes.
FAST_TIMINGS = {
    "LORAQ_HEARTBEAT_SECONDS": "1",
    "LORAQ_LEASE_SECONDS": "6",
    "LORAQ_RECONCILE_SECONDS": "2",
}


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.demo_model import ensure_demo_model

    return ensure_demo_model(tmp_path_factory.mktemp("models"))


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


@pytest.fixture
def empty_postgres_database() -> Iterator[str]:
    with fresh_postgres_database("unit") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


def _start_stack(name: str, home: Path, demo_model: Path, env: dict[str, str]) -> Stack:
    shutil.copytree(demo_model, home / "models" / demo_model.name)
    stack = Stack(name=name, home=home, env={"LORAQ_HOME": str(home), **FAST_TIMINGS, **env})
    stack.start_api()
    stack.start_worker()
    return stack


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
    stack = _start_stack(request.param, tmp_path_factory.mktemp(request.param), demo_model, env)
    yield stack
    stack.stop()


def chat_dataset(n: int = 24) -> bytes:
    """A small chat dataset whose answers follow a pattern a tiny model can pick up fast."""
    lines = []
    for i in range(n):
        lines.append(
            {
                "messages": [
                    {"role": "system", "content": "You answer with the color."},
                    {"role": "user", "content": f"What color is item {i}?"},
                    {"role": "assistant", "content": "blue blue blue"},
                ]
            }
        )
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client: Any, content: bytes, filename: str = "train.jsonl") -> dict[str, Any]:
    response = client.post("/v1/files", files={"file": (filename, content)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


FAST_HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "max_seq_len": 64}
