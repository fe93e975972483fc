"""Running the Alembic migrations from the `alliance` command and from tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from alliance.db import Database
from alliance.security.service import ensure_roles

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Apply the migrations, then make sure the built-in roles exist (they are data)."""
    command.upgrade(alembic_config(url), revision)
    db = Database(url)
    try:
        with db.transaction(write=True) as session:
            ensure_roles(session)
    finally:
        db.dispose()
