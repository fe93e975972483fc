"""Alembic migrations; run them with `alliance db upgrade`."""
