"""Running the Alembic migrations from the `alliance` command and from tests."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.reindex import reindex_if_behind
from alliance.security.service import ensure_roles
from fhir_mappings import build_registry

log = logging.getLogger("alliance.migrate")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "heads", settings: Settings | None = None) -> None:
    """Apply the migrations, make sure the built-in roles exist (they are data), and rebuild
    the search index if the rules that build it changed since it was built
    (alliance.fhir.reindex; with the settings the service runs with, for its base URL)."""
    command.upgrade(alembic_config(url), revision)
    db = Database(url)
    try:
        with db.transaction(write=True) as session:
            ensure_roles(session)
        if revision == "heads":
            settings = settings or Settings(database_url=url)
            with db.transaction(write=True) as session:
                done = reindex_if_behind(session, build_registry(settings), settings.base_url)
            if done is not None:
                log.info("search index rebuilt for the current rules: %d records", done)
    finally:
        db.dispose()
