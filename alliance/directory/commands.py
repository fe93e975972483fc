"""What people do with the alliance's directory, as commands every face calls (the portal,
the tests): register a patient, open and close a department. Each takes the caller's
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
    RESIDENT_ID,
)
from alliance.fhir.registry import OperationContext, Resource
from alliance.fhir.types import Version


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
