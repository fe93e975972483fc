"""The FHIR face of each domain: per resource type its search parameters, its checks beyond the
base model (fhir.resources R4B), and pure derivations. No I/O of its own."""

from __future__ import annotations

from alliance.config import Settings
from alliance.fhir.registry import Registry
from fhir_mappings import audit, directory, imaging, referral, teleconsult


def build_registry(settings: Settings) -> Registry:
    """Every resource type the service serves."""
    registry = Registry(
        [
            *directory.definitions(),
            *audit.definitions(),
            *referral.definitions(settings),
            *imaging.definitions(),
            *teleconsult.definitions(settings),
        ]
    )
    teleconsult.follow_tasks(registry, settings)
    return registry
