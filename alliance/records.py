"""Which hospital keeps a clinical record, stamped by the server.

A clinical record (a referral, a document, a care plan, a message) is kept by the hospital of
the user who wrote it; access rules and write rules read it from the `record-keeper`
extension, which the server sets on create and carries over on update, whatever a client sent.
"""

from __future__ import annotations

from alliance.codes import RECORD_KEEPER, RECORD_PATIENT
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.values import parse_reference


def reference_id(reference: object, resource_type: str) -> str | None:
    """The id of a `{"reference": "Type/id"}` to `resource_type`, else None."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parsed = parse_reference(reference["reference"], "")
    return parsed[1] if parsed and parsed[0] == resource_type else None


def extension_reference(resource: Resource | None, url: str, resource_type: str) -> str | None:
    for ext in (resource or {}).get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return reference_id(ext.get("valueReference"), resource_type)
    return None


def set_extension_reference(resource: Resource, url: str, reference: str) -> None:
    others = [e for e in resource.get("extension") or [] if e.get("url") != url]
    resource["extension"] = [*others, {"url": url, "valueReference": {"reference": reference}}]


def keeper_of(resource: Resource) -> str | None:
    return extension_reference(resource, RECORD_KEEPER, "Organization")


def record_patient_of(resource: Resource) -> str | None:
    return extension_reference(resource, RECORD_PATIENT, "Patient")


def stamp_keeper(ctx: WriteContext, resource: Resource, previous: Resource | None) -> None:
    """On create, the writer's hospital keeps the record; on update, whoever kept it still
    does. A write by the server itself (no actor) keeps what its caller set."""
    keeper = keeper_of(previous) if previous is not None else None
    if keeper is None and ctx.actor is not None:
        keeper = ctx.actor.hospital_id
    if keeper is None:
        keeper = keeper_of(resource)
    if keeper is not None:
        set_extension_reference(resource, RECORD_KEEPER, f"Organization/{keeper}")
