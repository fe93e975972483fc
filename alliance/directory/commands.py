"""What people do with the alliance's directory, as commands every face calls (the portal,
the tests, the demo seed): register a patient, open and close a department, enrol a
practitioner in a department with their title. Each takes the caller's
`OperationContext` and writes through the FHIR store, so the directory's rules
(alliance.directory.service: the identity number, who keeps the patient) run as for any FHIR
client."""

from __future__ import annotations

from dataclasses import dataclass

from alliance.codes import (
    DEPARTMENT,
    DEPARTMENT_VERSION,
    HL7_ORG_TYPE,
    LANGUAGE_EXTENSION,
    PRACTITIONER_HOSPITAL,
    PROFESSIONAL_TITLE,
    PROFESSIONAL_TITLES,
    RESIDENT_ID,
)
from alliance.errors import Invalid
from alliance.fhir.registry import OperationContext, Resource
from alliance.fhir.types import Version

#: HL7 practitioner-role codes (FHIR R4 valueset-practitioner-role): the alliance's staff
#: consult as doctors.
HL7_PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"


@dataclass(frozen=True)
class PersonName:
    """A name as written, in the script it is written in (a BCP 47 tag such as zh-Hans or
    kk-Cyrl, DOMAIN.md "Names"), as FHIR R4 HumanName.text with the language extension."""

    text: str
    script: str = "zh-Hans"
    use: str = "official"

    def element(self) -> Resource:
        return {
            "extension": [{"url": LANGUAGE_EXTENSION, "valueCode": self.script}],
            "use": self.use,
            "text": self.text.strip(),
        }


@dataclass(frozen=True)
class NewPatient:
    identity_number: str
    names: tuple[PersonName, ...]
    gender: str
    birth_date: str
    phone: str = ""


def register_patient(acting: OperationContext, new: NewPatient) -> Version:
    """A patient registered at the caller's hospital, which keeps their record (FHIR R4
    Patient with the resident identity number, 居民身份证号码)."""
    patient: Resource = {
        "resourceType": "Patient",
        "active": True,
        "identifier": [{"system": RESIDENT_ID, "value": new.identity_number.strip().upper()}],
        "name": [n.element() for n in new.names if n.text.strip()],
        "gender": new.gender,
        "birthDate": new.birth_date,
        "managingOrganization": {"reference": f"Organization/{acting.actor.hospital_id}"},
    }
    if new.phone.strip():
        patient["telecom"] = [{"system": "phone", "value": new.phone.strip()}]
    return acting.create(patient)


def department(hospital_id: str, *, name: str, code: str, display: str) -> Resource:
    """A department of a hospital as the directory keeps it: an Organization partOf the
    hospital, typed as a department and with its national department code (DOMAIN.md
    "Departments", 医疗机构诊疗科目名录)."""
    return {
        "resourceType": "Organization",
        "active": True,
        "name": name.strip(),
        "type": [
            {
                "coding": [
                    {"system": HL7_ORG_TYPE, "code": "dept", "display": "Hospital Department"}
                ]
            },
            {
                "coding": [
                    {
                        "system": DEPARTMENT,
                        "version": DEPARTMENT_VERSION,
                        "code": code,
                        "display": display,
                    }
                ]
            },
        ],
        "partOf": {"reference": f"Organization/{hospital_id}"},
    }


def open_department(acting: OperationContext, *, name: str, code: str, display: str) -> Version:
    """A department of the caller's hospital."""
    return acting.create(
        department(acting.actor.hospital_id, name=name, code=code, display=display)
    )


def set_department_open(acting: OperationContext, department_id: str, is_open: bool) -> Version:
    """Open or close a department (Organization.active): a closed one is not offered for
    referrals or consults."""
    org = acting.read("Organization", department_id).resource()
    org["active"] = is_open
    return acting.update(org)


def department_code(department: Resource) -> Resource | None:
    """A department's national code (its 诊疗科目 coding), or None for an Organization that
    carries none."""
    return next(
        (
            dict(c)
            for t in department.get("type") or []
            for c in t.get("coding") or []
            if c.get("system") == DEPARTMENT
        ),
        None,
    )


def practitioner(hospital_id: str, *, name: PersonName, title: str) -> Resource:
    """A doctor of a hospital (FHIR R4 Practitioner): their name as written, the hospital
    whose staff they are, and their professional title (职称) as a qualification."""
    return {
        "resourceType": "Practitioner",
        "extension": [
            {
                "url": PRACTITIONER_HOSPITAL,
                "valueReference": {"reference": f"Organization/{hospital_id}"},
            }
        ],
        "active": True,
        "name": [name.element()],
        "qualification": [
            {
                "code": {
                    "coding": [
                        {
                            "system": PROFESSIONAL_TITLE,
                            "code": title,
                            "display": PROFESSIONAL_TITLES.get(title, title),
                        }
                    ]
                }
            }
        ],
    }


def practitioner_role(hospital_id: str, *, practitioner_id: str, specialty: Resource) -> Resource:
    """A doctor's place at a hospital (FHIR R4 PractitionerRole): the hospital as its
    organization and the department's national code as its specialty, which is how consult
    requests for a department find its specialists (teleconsult.slots)."""
    return {
        "resourceType": "PractitionerRole",
        "active": True,
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "organization": {"reference": f"Organization/{hospital_id}"},
        "code": [
            {"coding": [{"system": HL7_PRACTITIONER_ROLE, "code": "doctor", "display": "Doctor"}]}
        ],
        "specialty": [{"coding": [specialty]}],
    }


@dataclass(frozen=True)
class Enrolled:
    practitioner_id: str
    role_id: str


def enrol_practitioner(
    acting: OperationContext, *, name: PersonName, title: str, department_id: str
) -> Enrolled:
    """A new doctor of the caller's hospital, in one of its departments with their title: the
    Practitioner and their PractitionerRole, checked by the directory's rules
    (alliance.directory.service.check_practitioner, check_practitioner_role) as any FHIR
    client's writes are."""
    if not name.text.strip():
        raise Invalid(
            "give the doctor's name", expression=["Practitioner.name"], rule="practitioner-name"
        )
    hospital = acting.actor.hospital_id
    found = acting.read("Organization", department_id).resource()
    specialty = department_code(found)
    if specialty is None or found.get("partOf") != {"reference": f"Organization/{hospital}"}:
        raise Invalid(
            f"Organization/{department_id} is not a department of this hospital",
            expression=["PractitionerRole.specialty"],
            rule="role-department",
        )
    doctor = acting.create(practitioner(hospital, name=name, title=title))
    role = acting.create(
        practitioner_role(hospital, practitioner_id=doctor.id, specialty=specialty)
    )
    return Enrolled(practitioner_id=doctor.id, role_id=role.id)
