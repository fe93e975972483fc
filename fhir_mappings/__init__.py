"""The FHIR face of each domain: per resource type its search parameters, its checks beyond the
base model (fhir.resources R4B), and pure derivations. No I/O of its own."""

from __future__ import annotations

from alliance.config import Settings
from alliance.fhir.registry import Registry
from fhir_mappings import audit, directory, imaging, notify, referral, teleconsult
from referral.service import ReferralRules
from teleconsult.service import Teleconsult


def build_registry(settings: Settings) -> Registry:
    """Every resource type the service serves; each domain's rules are built here, once."""
    referral_rules = ReferralRules(settings)
    tele = Teleconsult.build(settings, referral_rules)
    registry = Registry(
        [
            *directory.definitions(),
            *audit.definitions(),
            *referral.definitions(settings, referral_rules),
            *imaging.definitions(),
            *teleconsult.definitions(settings, tele),
            *notify.definitions(settings),
        ]
    )
    # A teleconsult is a referral: its Task's hooks are the referral's, then the teleconsult's.
    registry.get("Task").after_write.extend(teleconsult.task_after_write(tele))
    return registry
