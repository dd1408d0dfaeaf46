"""The migration head equals the models, on SQLite and on Postgres, and downgrades cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command

from loraq.migrate import alembic_config


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.db'}"
    url: str = request.getfixturevalue("empty_postgres_database")
    return url.replace("postgresql://", "postgresql+psycopg://")


def test_head_matches_models_and_round_trips(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    command.check(config)  # raises if autogenerate would find any difference
    command.downgrade(config, "base")
    command.upgrade(config, "head")
