"""Bring the database schema to the newest Alembic revision (idempotent; both processes may call it)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from loraq.settings import get_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url or get_settings().resolved_database_url)
    return config


def upgrade_to_head(database_url: str | None = None) -> None:
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), "head")
