"""Every module that defines tables, imported so the metadata is complete (for migrations)."""

from __future__ import annotations


def import_all_models() -> None:
    import referral.models  # noqa: F401
