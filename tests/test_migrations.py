"""The migrations and the models agree (`alembic check`): a model changed without its migration,
or a migration that drifts from the models, fails here, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic import command

from server.migrate import alembic_config


def test_models_match_the_migrations(database_url: str) -> None:
    # The test database was made by running every migration; nothing is left to generate.
    command.check(alembic_config(database_url))
