"""Organization, OrganizationAffiliation, Practitioner, PractitionerRole and Patient."""

from __future__ import annotations

from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.organizationaffiliation import OrganizationAffiliation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole

from alliance.codes import PRACTITIONER_HOSPITAL
from alliance.directory.service import (
    check_patient,
    check_practitioner,
    check_practitioner_role,
    managing_hospital,
    prepare_patient,
    reference_id,
)
from alliance.fhir.registry import ALL_INTERACTIONS, Resource, ResourceDefinition, SearchParam

_NO_DELETE = ALL_INTERACTIONS - {"delete"}


def _own_id(resource: Resource) -> str | None:
    """An Organization owns itself; a department is owned by the hospital it is part of."""
    return reference_id(resource.get("partOf"), "Organization") or resource.get("id")


def _staff_of(resource: Resource) -> str | None:
    for ext in resource.get("extension") or []:
        if ext.get("url") == PRACTITIONER_HOSPITAL:
            return reference_id(ext.get("valueReference"), "Organization")
    return None


def _role_hospital(resource: Resource) -> str | None:
    return reference_id(resource.get("organization"), "Organization")


def definitions() -> list[ResourceDefinition]:
    return [
        ResourceDefinition(
            "Organization",
            Organization,
            [
                SearchParam("name", "string", "name", "Name (Chinese or English), or an alias"),
                SearchParam("alias", "string", "alias", "Another name of the organization"),
                SearchParam("identifier", "token", "identifier", "An identifier"),
                SearchParam("type", "token", "type", "Kind: hospital, department, ..."),
                SearchParam(
                    "partof",
                    "reference",
                    "partOf",
                    "The hospital a department belongs to",
                    ("Organization",),
                ),
                SearchParam("active", "token", "active", "Whether it is in active use"),
            ],
            "Hospitals of the alliance and their departments (partOf the hospital).",
            interactions=_NO_DELETE,
            access="directory",
            organization_of=_own_id,
        ),
        ResourceDefinition(
            "OrganizationAffiliation",
            OrganizationAffiliation,
            [
                SearchParam(
                    "primary-organization",
                    "reference",
                    "organization",
                    "The city hospital of a partnership",
                    ("Organization",),
                ),
                SearchParam(
                    "participating-organization",
                    "reference",
                    "participatingOrganization",
                    "The county hospital of a partnership",
                    ("Organization",),
                ),
                SearchParam("role", "token", "code", "Kind of partnership"),
                SearchParam("active", "token", "active", "Whether the partnership is active"),
                SearchParam("date", "date", "period", "When the partnership is in force"),
            ],
            "Partnerships between alliance hospitals (data, not code: the alliance can grow).",
            access="directory",
            organization_of=lambda r: reference_id(r.get("organization"), "Organization"),
        ),
        ResourceDefinition(
            "Practitioner",
            Practitioner,
            [
                SearchParam("identifier", "token", "identifier", "An identifier"),
                SearchParam("name", "string", "name", "Any part of any name"),
                SearchParam("family", "string", "name.family", "Family name"),
                SearchParam("given", "string", "name.given", "Given name"),
                SearchParam(
                    "qualification",
                    "token",
                    "qualification.code",
                    "Professional title (主任医师, 副主任医师, 主治医师, ...)",
                ),
                SearchParam("active", "token", "active", "Whether the record is active"),
            ],
            "Doctors of the alliance; their professional title is a qualification.",
            interactions=_NO_DELETE,
            on_write=check_practitioner,
            access="directory",
            organization_of=_staff_of,
        ),
        ResourceDefinition(
            "PractitionerRole",
            PractitionerRole,
            [
                SearchParam(
                    "organization",
                    "reference",
                    "organization",
                    "The hospital",
                    ("Organization",),
                ),
                SearchParam(
                    "practitioner",
                    "reference",
                    "practitioner",
                    "The practitioner",
                    ("Practitioner",),
                ),
                SearchParam("specialty", "token", "specialty", "Department specialty"),
                SearchParam("role", "token", "code", "Role (doctor, ...)"),
                SearchParam("active", "token", "active", "Whether the role is active"),
                SearchParam("identifier", "token", "identifier", "An identifier"),
            ],
            "A practitioner's role at a hospital: department, specialty and role.",
            access="directory",
            on_write=check_practitioner_role,
            organization_of=_role_hospital,
        ),
        ResourceDefinition(
            "Patient",
            Patient,
            [
                SearchParam("identifier", "token", "identifier", "Identity number, MRN, ..."),
                SearchParam(
                    "identity",
                    "string",
                    "identifier",
                    "Identity number or MRN by its start; identity:contains=0242 by any part",
                ),
                SearchParam(
                    "name",
                    "string",
                    "name",
                    "Any name, any script, by its start or any part's; parts may be separated by "
                    "'·', '.', '•' or a space; names in Chinese characters also by pinyin "
                    "(wangjianguo, wjg)",
                ),
                SearchParam("family", "string", "name.family", "Family name"),
                SearchParam("given", "string", "name.given", "Given name"),
                SearchParam("birthdate", "date", "birthDate", "Date of birth"),
                SearchParam("gender", "token", "gender", "Administrative gender"),
                SearchParam(
                    "organization",
                    "reference",
                    "managingOrganization",
                    "The hospital that keeps the record",
                    ("Organization",),
                ),
                SearchParam("telecom", "token", "telecom", "Phone number or e-mail"),
                SearchParam("address", "string", "address", "Any part of an address"),
                SearchParam("active", "token", "active", "Whether the record is active"),
            ],
            "Patients, each kept by one hospital; matched across hospitals on the resident "
            "identity number (GB 11643). Records are never deleted; set active to false.",
            interactions=_NO_DELETE,
            prepare=prepare_patient,
            on_write=check_patient,
            patient_of=lambda r: r.get("id"),
            organization_of=managing_hospital,
        ),
    ]
