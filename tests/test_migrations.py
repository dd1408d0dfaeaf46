"""The migration head equals the models, on SQLite and on Postgres, and downgrades cleanly."""

from __future__ import annotations

from alembic import command

from loraq.core.migrate import alembic_config


def test_head_matches_models_and_round_trips(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    command.check(config)  # raises if autogenerate would find any difference
    command.downgrade(config, "base")
    command.upgrade(config, "head")
