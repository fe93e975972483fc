"""Every module that defines tables, imported so the metadata is complete (for migrations)."""

from __future__ import annotations

from importlib import import_module

MODEL_MODULES = (
    "alliance.attachments.models",
    "alliance.audit.models",
    "alliance.directory.models",
    "alliance.fhir.models",
    "alliance.notify.models",
    "alliance.security.models",
    "imaging.models",
    "referral.models",
    "teleconsult.models",
)


def import_all_models() -> None:
    for name in MODEL_MODULES:
        import_module(name)
