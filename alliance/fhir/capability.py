"""The CapabilityStatement, generated from the registry so it cannot drift from what is served
(FHIR R4 capabilitystatement.html)."""

from __future__ import annotations

from typing import Any

from alliance.fhir.registry import Registry
from alliance.fhir.search import COMMON_PARAMS

_INTERACTION_ORDER = ("read", "vread", "update", "delete", "history-instance", "create")


def capability_statement(registry: Registry, *, base_url: str, software: str) -> dict[str, Any]:
    resources = []
    for d in registry.definitions():
        resources.append(
            {
                "type": d.type,
                "documentation": d.documentation,
                "interaction": [
                    {"code": code}
                    for code in (*_INTERACTION_ORDER, "search-type")
                    if code in d.interactions
                ],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": False,
                "conditionalCreate": "create" in d.interactions,
                "conditionalRead": "not-supported",
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchInclude": d.includes,
                "searchParam": [
                    {"name": p.name, "type": p.type, "documentation": p.documentation}
                    for p in (*COMMON_PARAMS, *d.search_params)
                ],
            }
        )
        if d.capability_extensions:
            resources[-1]["extension"] = list(d.capability_extensions)
        if d.operations:
            resources[-1]["operation"] = [
                {"name": op.name, "definition": op.definition, "documentation": op.documentation}
                for op in d.operations.values()
            ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-29",
        "kind": "instance",
        "software": {"name": software},
        "implementation": {"description": "Yangzhou-Xinyuan medical alliance", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Search results page by `_count` (capped) with opaque `next` links; "
                    "`Prefer: handling=lenient` ignores unknown parameters and reports them."
                ),
                "resource": resources,
            }
        ],
    }
