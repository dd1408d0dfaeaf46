"""Bring the database schema to the newest Alembic revision (idempotent; every process may call it).

`loraq-migrate` runs it alone: the one-shot step a deployment finishes before starting the API and workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from loraq.core.settings import get_settings

# Inside the package, so an installed wheel migrates without a source checkout.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

log = logging.getLogger("loraq.migrate")


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    url = database_url or get_settings().resolved_database_url
    # The config is a ConfigParser: a '%' in a URL-encoded password would read as interpolation.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str | None = None) -> None:
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), "head")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upgrade_to_head()
    log.info("the database schema is at the newest revision")


if __name__ == "__main__":
    main()
