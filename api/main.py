"""`loraq-api`: migrate the database, make the first admin key, serve HTTP."""

from __future__ import annotations

import logging
import os

import uvicorn

from api.app import create_app
from loraq.db import session_scope
from loraq.keys import ensure_admin_key
from loraq.migrate import upgrade_to_head
from loraq.settings import get_settings

log = logging.getLogger("loraq.api")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    upgrade_to_head()
    with session_scope() as session:
        new_key = ensure_admin_key(session, settings.admin_key_path)
    if new_key:
        log.info("created the first admin API key in %s", settings.admin_key_path.resolve())
    port = int(os.environ.get("PORT", settings.port))
    print(f"loraq API on http://{settings.host}:{port}  (admin key: {settings.admin_key_path})", flush=True)
    uvicorn.run(create_app(), host=settings.host, port=port, log_level="info")


if __name__ == "__main__":
    main()
