"""Rules of directory records beyond the base FHIR model."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alliance.codes import (
    DEPARTMENT,
    PRACTITIONER_HOSPITAL,
    PROFESSIONAL_TITLE,
    PROFESSIONAL_TITLES,
    RESIDENT_ID,
)
from alliance.directory.identity import (
    IdentityNumber,
    IdentityNumberError,
    parse_identity_number,
)
from alliance.directory.models import PatientIdentity
from alliance.errors import Conflict, Invalid, Issue
from alliance.fhir.models import ResourceRow, TokenIndex
from alliance.fhir.registry import WriteContext
from alliance.fhir.values import parse_reference

Resource = dict[str, Any]


def reference_id(reference: object, resource_type: str, base_url: str = "") -> str | None:
    """The id of a `{"reference": "Type/id"}` to `resource_type`, else None."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parsed = parse_reference(reference["reference"], base_url)
    return parsed[1] if parsed and parsed[0] == resource_type else None


def managing_hospital(patient: Resource) -> str | None:
    return reference_id(patient.get("managingOrganization"), "Organization")


def prepare_patient(ctx: WriteContext, patient: Resource, previous: Resource | None) -> None:
    """A Patient sent without managingOrganization (stock FHIR clients do not know the
    alliance's rule) is kept by the hospital that kept it so far, or for a new record by the
    hospital of whoever writes it. One that names a hospital keeps it, and the access rules
    then decide whether the writer may keep a record there."""
    _fill_from_identity_number(patient)
    if "managingOrganization" in patient:
        return
    hospital = managing_hospital(previous) if previous is not None else None
    if hospital is None and ctx.actor is not None:
        hospital = ctx.actor.hospital_id
    if hospital:
        patient["managingOrganization"] = {"reference": f"Organization/{hospital}"}


def _fill_from_identity_number(patient: Resource) -> None:
    """The birth date and sex a resident identity number states (GB 11643: digits 7-14 and
    the parity of the sequence), filled where the record gives none."""
    for ident in patient.get("identifier") or []:
        if ident.get("system") != RESIDENT_ID:
            continue
        try:
            parsed = parse_identity_number(str(ident.get("value") or ""))
        except IdentityNumberError:
            return  # check_patient says why
        patient.setdefault("birthDate", parsed.birth_date.isoformat())
        patient.setdefault("gender", parsed.sex)
        return


def check_patient(ctx: WriteContext, patient: Resource, previous: Resource | None) -> list[Issue]:
    """A Patient: a managing hospital, valid identity numbers (GB 11643), one record per
    identity number per hospital, and a full-text form on every name."""
    session = ctx.session
    warnings: list[Issue] = []
    hospital = managing_hospital(patient)
    if hospital is None:
        raise Invalid(
            "a Patient needs managingOrganization: the hospital that keeps the record",
            rule="patient-hospital",
            expression=["Patient.managingOrganization"],
        )
    org = session.get(ResourceRow, ("Organization", hospital))
    if org is None or org.deleted:
        raise Invalid(
            f"managingOrganization Organization/{hospital} is not a hospital of the alliance",
            rule="patient-hospital",
            expression=["Patient.managingOrganization"],
        )
    for i, name in enumerate(patient.get("name") or []):
        if not (name.get("text") or "").strip():
            raise Invalid(
                "every name needs its full-text form in text (names are kept as typed, "
                "not forced into family/given)",
                rule="patient-name-text",
                expression=[f"Patient.name[{i}].text"],
            )
    numbers: list[str] = []
    for i, ident in enumerate(patient.get("identifier") or []):
        if ident.get("system") != RESIDENT_ID:
            continue
        where = f"Patient.identifier[{i}].value"
        try:
            parsed = parse_identity_number(ident.get("value") or "")
        except IdentityNumberError as exc:
            raise Invalid(str(exc), rule=exc.rule, expression=[where]) from None
        warnings.extend(Issue(w, "business-rule", "warning", [where]) for w in parsed.warnings)
        _check_agrees(patient, parsed)
        numbers.append(parsed.value)
    if len(set(numbers)) > 1:
        raise Invalid(
            "a Patient has one resident identity number",
            rule="identity-one",
            expression=["Patient.identifier"],
        )
    _keep_identity(session, patient["id"], hospital, numbers[0] if numbers else None)
    return warnings


def _check_agrees(patient: Resource, number: IdentityNumber) -> None:
    """The birth date and sex recorded are the ones the identity number states (GB 11643):
    a contradiction is a typing error in one of them, refused naming the rule."""
    born = number.birth_date.isoformat()
    if patient.get("birthDate") not in (None, born):
        raise Invalid(
            f"the birth date {patient['birthDate']} is not the one in the identity number ({born})",
            rule="identity-birth-date",
            expression=["Patient.birthDate"],
        )
    if patient.get("gender") in ("male", "female") and patient["gender"] != number.sex:
        raise Invalid(
            f"the sex {patient['gender']} is not the one the identity number states "
            f"({number.sex}: its 17th digit is {'odd' if number.sex == 'male' else 'even'})",
            rule="identity-sex",
            expression=["Patient.gender"],
        )


def _keep_identity(session: Session, patient_id: str, hospital: str, number: str | None) -> None:
    row = session.get(PatientIdentity, patient_id)
    if number is None:
        if row is not None:
            session.delete(row)
        return
    other = session.scalars(
        select(PatientIdentity.patient_id).where(
            PatientIdentity.organization_id == hospital,
            PatientIdentity.identity_number == number,
            PatientIdentity.patient_id != patient_id,
        )
    ).first()
    if other is not None:
        raise Conflict(
            f"Patient/{other} at this hospital already has identity number {number}",
            rule="identity-duplicate",
            expression=["Patient.identifier"],
        )
    if row is None:
        session.add(
            PatientIdentity(patient_id=patient_id, organization_id=hospital, identity_number=number)
        )
    else:
        row.organization_id, row.identity_number = hospital, number


def check_practitioner(
    ctx: WriteContext, practitioner: Resource, previous: Resource | None
) -> list[Issue]:
    """A Practitioner's professional title (职称) is one the alliance knows
    (alliance.codes.PROFESSIONAL_TITLES), so bookings can rank and show it."""
    for i, qualification in enumerate(practitioner.get("qualification") or []):
        for coding in (qualification.get("code") or {}).get("coding") or []:
            if coding.get("system") == PROFESSIONAL_TITLE and coding.get("code") not in (
                PROFESSIONAL_TITLES
            ):
                raise Invalid(
                    f"{coding.get('code')!r} is not a professional title: one of "
                    f"{', '.join(PROFESSIONAL_TITLES)}",
                    rule="practitioner-title",
                    expression=[f"Practitioner.qualification[{i}].code"],
                )
    return []


def check_practitioner_role(
    ctx: WriteContext, role: Resource, previous: Resource | None
) -> list[Issue]:
    """A PractitionerRole (FHIR R4 practitionerrole.html) places a doctor at a hospital (its
    organization): its practitioner (when named) is on that hospital's staff, and each
    department specialty (诊疗科目 code) is one of that hospital's departments, so consult
    requests for the department find the doctor."""
    # The organization is the writer's own hospital: alliance.security.access.check_write.
    hospital = reference_id(role.get("organization"), "Organization")
    doctor = reference_id(role.get("practitioner"), "Practitioner")
    if "practitioner" in role:
        staff = ctx.session.get(ResourceRow, ("Practitioner", doctor)) if doctor else None
        if staff is None or staff.deleted or staff.organization_id != hospital:
            raise Invalid(
                f"the practitioner is not on the staff of Organization/{hospital} "
                f"({PRACTITIONER_HOSPITAL})",
                rule="role-practitioner",
                expression=["PractitionerRole.practitioner"],
            )
    departments = set(
        ctx.session.scalars(
            select(TokenIndex.code).where(
                TokenIndex.resource_type == "Organization",
                TokenIndex.param == "type",
                TokenIndex.system == DEPARTMENT,
                TokenIndex.resource_id.in_(
                    select(ResourceRow.id).where(
                        ResourceRow.resource_type == "Organization",
                        ResourceRow.organization_id == hospital,
                        ResourceRow.id != hospital,
                        ResourceRow.deleted.is_(False),
                    )
                ),
            )
        )
    )
    for i, specialty in enumerate(role.get("specialty") or []):
        for coding in specialty.get("coding") or []:
            if coding.get("system") == DEPARTMENT and coding.get("code") not in departments:
                raise Invalid(
                    f"Organization/{hospital} has no department {coding.get('code')!r}",
                    rule="role-department",
                    expression=[f"PractitionerRole.specialty[{i}]"],
                )
    return []
