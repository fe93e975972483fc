"""Every module that defines tables, imported so the metadata is complete (for migrations)."""

from __future__ import annotations


def import_all_models() -> None:
    import alliance.audit.models
    import alliance.directory.models
    import alliance.fhir.models
    import alliance.security.models  # noqa: F401
