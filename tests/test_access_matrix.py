"""The access matrix: for each account, record and interaction, the one status the documented
rules give, and for searches whether the record is in the Bundle.

The rules (README "Accounts, tokens and who may see what"; alliance/security/access.py; the
scope ceilings of BUILTIN_ROLES in alliance/security/service.py), in the order they apply:
1. An interaction a type does not allow at all answers 405, whoever asks (FHIR R4
   http.html#delete: a server that refuses to delete a type "on principle" answers 405; the
   same for writes to the read-only types and AuditEvent's history).
2. A type or interaction outside the token's scope answers 403, before any look at the record.
3. A clinical record out of reach (not kept by the caller's hospital, not about a patient it
   keeps, not opened to it by a grant in force) answers 404, and is never in a Bundle.
4. Writes: a clinical record is written by the hospital that keeps it (a visible record of
   another hospital: 403), a referral's Task by both of its hospitals; a new clinical record
   must be about a patient the writer can see (else 404); the directory is written by each
   hospital's administrators, for their own hospital (else 403).
5. Past the access rules, the domain's: a sent ServiceRequest never changes (409).

The expectations were written from those rules, not recorded from the server; where the server
disagrees, the rule's expectation stays and the cell is a strict xfail (DISAGREES) that says
so. A failing cell is named `account|record|interaction`.

The records are made once per backend, in one app and database shared by the module, by
driving real referrals through the FHIR API as the doctors do (tests/referrals.py). Writes
that succeed leave the records as they were in every way the table looks at (a PUT of the
current body; creates make new records; deletes remove fresh copies).

TABLE is in sections, one per relation of a record to an account: own; own patient (another
hospital's record about a patient the account's hospital keeps); granted (an accepted referral
in force); closed or ended (a referral cancelled, or completed past its grant days); other (a
hospital not involved); and the roles without clinical scope. Sections still to come with the
sharing rule under way: "triage" (a referral not yet accepted: add a pending referral in
`build_world` and its rows), "attachment" (`GET /api/attachments/{id}`: a runner in RUNNERS and
an `attachment=` column on the rows) and "derived share" (what a hospital seen through a
grant passes on: the create cells left out below).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alliance.config import Settings
from alliance.security.service import register_client
from fhir_mappings import build_registry
from server.app import create_app
from tests.conftest import PG_URL, bearer, skip_or_fail
from tests.factories import identity_number, patient
from tests.imaging_data import AYGUL, ct_series, multipart, stow_headers
from tests.referrals import (
    CONSULT_NOTE,
    PDF,
    PNG,
    consent_body,
    create,
    document,
    move,
    record_consent,
    request_body,
    task_body,
)

# ---- accounts --------------------------------------------------------------------------------

XP = "dr.xinyuan.people"  # 新源县人民医院, county doctor
HIS = "his.xinyuan.people"  # 新源县人民医院's own system: client_credentials, hospital-system
XP_PATIENT_RS = "dr.xinyuan.people~Patient.rs"  # the same doctor with a token of Patient.rs
XT = "dr.xinyuan.tcm"  # 新源县中医医院, county doctor
SB = "sp.subei"  # 苏北人民医院, specialist
YT = "sp.yz.tcm"  # 扬州市中医院, specialist
ADMIN_SB = "admin.subei"
ADMIN_XP = "admin.xinyuan.people"
AUDITOR = "auditor"
ACCOUNTS = (XP, HIS, XP_PATIENT_RS, XT, SB, YT, ADMIN_SB, ADMIN_XP, AUDITOR)
XP_SIDE = (XP, HIS)  # a hospital's doctor and its system act for it alike
CLINICAL = (XP, HIS, XT, SB, YT)  # the clinical capability, user/*.cruds or system/*.cruds
ADMINS = (ADMIN_SB, ADMIN_XP)
#: The types each token may search (its role's ceiling, BUILTIN_ROLES); None: every type.
SEARCHABLE: dict[str, frozenset[str] | None] = {
    **dict.fromkeys(CLINICAL, None),
    **dict.fromkeys(
        ADMINS,
        frozenset(
            {
                "Organization",
                "OrganizationAffiliation",
                "Practitioner",
                "PractitionerRole",
                "Schedule",
                "Slot",
                "HealthcareService",
            }
        ),
    ),
    AUDITOR: frozenset(
        {
            "AuditEvent",
            "Organization",
            "OrganizationAffiliation",
            "Practitioner",
            "PractitionerRole",
        }
    ),
    XP_PATIENT_RS: frozenset({"Patient"}),
}

# ---- records ---------------------------------------------------------------------------------
# A:  阿依古丽 (新源县人民医院) referred up to 苏北人民医院, with a CT study, and accepted.
# S:  what 苏北人民医院 keeps itself: a patient it registered, its note and its message on 阿依古丽.
# B:  马秀兰 (新源县中医医院) referred to 扬州市中医院 and accepted.
# C:  王建国 (新源县人民医院) referred to 苏北人民医院, accepted, then cancelled by the sender.
# CS: 苏北人民医院's note on 王建国, written while referral C was in force.
# D:  买买提 (新源县人民医院) referred to 苏北人民医院 and completed; the app runs with
#     grant_days_after_completion=0, so the grant has ended.
REFERRAL = ("Patient", "Consent", "DocumentReference", "ServiceRequest", "Task", "Communication")


def group(prefix: str, *types: str) -> tuple[str, ...]:
    return tuple(f"{prefix}/{t}" for t in types)


def rtype_of(record: str) -> str:
    return record.split("/")[-1].split("@")[0]


#: Directory records of the demo alliance (server.demo); departments rather than hospitals, so
#: that a new one like it belongs to the same hospital.
DIRECTORY = {
    "dir/Organization@subei": "subei-cardiology",
    "dir/Organization@xy-people": "xy-people-cardiology",
    "dir/OrganizationAffiliation@subei": "subei-xy-people",
    "dir/OrganizationAffiliation@yz-tcm": "yz-tcm-xy-tcm",
    "dir/Practitioner@subei": "sp-subei",
    "dir/Practitioner@xy-people": "dr-xinyuan-people",
    "dir/PractitionerRole@subei": "sp-subei-role",
    "dir/PractitionerRole@xy-people": "dr-xinyuan-people-role",
}
RECORDS = (
    *group("A", *REFERRAL, "ImagingStudy"),
    *group("S", "Patient", "DocumentReference", "Communication"),
    *group("B", *REFERRAL),
    *group("C", *REFERRAL),
    "CS/DocumentReference",
    *group("D", "Patient", "DocumentReference", "ServiceRequest", "Task"),
    *DIRECTORY,
    "AuditEvent",
)
IMAGING = ("A/ImagingStudy",)
PATIENTS = tuple(r for r in RECORDS if rtype_of(r) == "Patient")
CLINICAL_RECORDS = tuple(r for r in RECORDS if not r.startswith(("dir/", "AuditEvent")))
#: Kept by 新源县人民医院 or 苏北人民医院: out of reach of 新源县中医医院 and 扬州市中医院.
XP_OR_SB_KEPT = tuple(r for r in CLINICAL_RECORDS if not r.startswith("B/"))
DIR_UNDELETABLE = group(
    "dir", "Organization@subei", "Organization@xy-people", "Practitioner@subei",
    "Practitioner@xy-people",
)  # fmt: skip
DIR_DELETABLE = tuple(r for r in DIRECTORY if r not in DIR_UNDELETABLE)

# ---- the table -------------------------------------------------------------------------------

IN, OUT = "in", "out"  # a search: 200, and the record is (is not) in the Bundle
INTERACTIONS = ("read", "vread", "history", "search", "update", "create", "delete")
Expected = int | str | None


@dataclass(frozen=True)
class Row:
    accounts: tuple[str, ...]
    records: tuple[str, ...]
    expect: dict[str, Expected]
    why: str = ""


def row(
    accounts: tuple[str, ...],
    records: tuple[str, ...],
    *values: Expected,
    why: str = "",
    **more: Expected,
) -> Row:
    """A line of the table: the status of read, vread, history, search (by _id: IN or OUT, and
    the same for each `_include` of the type), update, create and delete, in that order, and of
    any interaction added later by name (`attachment=...`). `update` PUTs the record's current
    body; `create` POSTs a new record like it (same hospital, or same patient and referral); a
    cell left out on purpose is None, and `why` says why."""
    return Row(accounts, records, {**dict(zip(INTERACTIONS, values, strict=True)), **more}, why)


# fmt: off
OWN = [
    #   accounts  records                          read vread hist search update create delete
    row(XP_SIDE, (*group("A", "Patient", "Consent", "DocumentReference", "Communication"),
                  *group("C", "Patient", "Consent", "DocumentReference"),
                  "D/Patient", "D/DocumentReference"),
                                                     200, 200, 200, IN, 200, 201, 405),
    row(XP_SIDE, ("C/Communication",),               200, 200, 200, IN, 200, 422, 405,
        why="create: no new message on a cancelled referral (it would open a new grant)"),
    row(XP_SIDE, group("A", "ServiceRequest"),       200, 200, 200, IN, 409, 201, 405,
        why="a sent request never changes"),
    row(XP_SIDE, ("C/ServiceRequest", "D/ServiceRequest"),
                                                     200, 200, 200, IN, 409, 201, 405),
    row(XP_SIDE, ("A/Task", "C/Task", "D/Task"),     200, 200, 200, IN, 200, None, 405,
        why="create: a Task is the referral's workflow (tests/test_referral.py)"),
    row(XP_SIDE, IMAGING,                            200, 200, 200, IN, 405, 405, 405,
        why="ImagingStudy is read-only over FHIR"),
    row((XT,), group("B", "Patient", "Consent", "DocumentReference", "Communication"),
                                                     200, 200, 200, IN, 200, 201, 405),
    row((XT,), ("B/ServiceRequest",),                200, 200, 200, IN, 409, 201, 405),
    row((XT,), ("B/Task",),                          200, 200, 200, IN, 200, None, 405),
    row((SB,), group("S", "Patient", "DocumentReference", "Communication"),
                                                     200, 200, 200, IN, 200, 201, 405),
    row((SB,), ("CS/DocumentReference",),            200, 200, 200, IN, 200, 404, 405,
        why="its own note stays its own; a new record about 王建国 needs a grant in force"),
]
OWN_PATIENT = [
    row(XP_SIDE, ("S/DocumentReference", "S/Communication", "CS/DocumentReference"),
                                                     200, 200, 200, IN, 403, 201, 405,
        why="seen (the patient is its own), written only by the hospital that keeps it"),
]
GRANTED = [
    row((SB,), ("A/Patient",),                       200, 200, 200, IN, 403, 403, 405,
        why="create: a Patient of 新源县人民医院, which only that hospital writes"),
    row((SB,), ("A/DocumentReference", "A/Communication"),
                                                     200, 200, 200, IN, 403, 201, 405,
        why="create: its own record about a patient it can see"),
    row((SB,), ("A/Consent", "A/ServiceRequest"),    200, 200, 200, IN, 403, None, 405,
        why="create: a consent or referral about a patient seen through a grant is a "
            "'derived share' cell, to come with the sharing rule under way"),
    row((SB,), ("A/Task",),                          200, 200, 200, IN, 200, None, 405,
        why="both hospitals of a referral write its Task"),
    row((SB,), IMAGING,                              200, 200, 200, IN, 405, 405, 405),
    row((YT,), ("B/Patient",),                       200, 200, 200, IN, 403, 403, 405),
    row((YT,), ("B/DocumentReference", "B/Communication"),
                                                     200, 200, 200, IN, 403, 201, 405),
    row((YT,), ("B/Consent", "B/ServiceRequest"),    200, 200, 200, IN, 403, None, 405),
    row((YT,), ("B/Task",),                          200, 200, 200, IN, 200, None, 405),
]
CLOSED_OR_ENDED = [
    row((SB,), ("C/Patient", "D/Patient"),           404, 404, 404, OUT, 404, 403, 405),
    row((SB,), (*group("C", "Consent", "DocumentReference", "ServiceRequest", "Communication"),
                "D/DocumentReference", "D/ServiceRequest"),
                                                     404, 404, 404, OUT, 404, 404, 405),
    row((SB,), ("C/Task", "D/Task"),                 404, 404, 404, OUT, 404, 404, 405,
        why="the worklist item closes with the referral (it names the patient and the "
            "diagnosis): nothing derived from a grant outlives it"),
]


def other(accounts: tuple[str, ...], records: tuple[str, ...]) -> list[Row]:
    """Records of a hospital not involved: as if they did not exist."""
    patients = tuple(r for r in records if r in PATIENTS)
    imaging = tuple(r for r in records if r in IMAGING)
    rest = tuple(r for r in records if r not in patients + imaging)
    rows = [
        row(accounts, rest,                          404, 404, 404, OUT, 404, 404, 405,
            why="create: about a patient out of reach"),
        row(accounts, imaging,                       404, 404, 404, OUT, 405, 405, 405),
        row(accounts, patients,                      404, 404, 404, OUT, 404, 403, 405,
            why="create: a Patient of another hospital"),
    ]
    return [r for r in rows if r.records]


OTHER = [
    *other((XT, YT), XP_OR_SB_KEPT),
    *other((*XP_SIDE, SB), group("B", *REFERRAL)),
    *other(XP_SIDE, ("S/Patient",)),
]
NOT_IN_SCOPE = [
    row((*ADMINS, AUDITOR), tuple(r for r in CLINICAL_RECORDS if r not in IMAGING),
                                                     403, 403, 403, 403, 403, 403, 405,
        why="no clinical type in their roles' ceilings"),
    row((*ADMINS, AUDITOR), IMAGING,                 403, 403, 403, 403, 405, 405, 405),
    row((XP_PATIENT_RS,), ("A/Patient", "C/Patient", "D/Patient"),
                                                     200, 200, 200, IN, 403, 403, 405,
        why="Patient.rs: reads within reach, writes nothing"),
    row((XP_PATIENT_RS,), ("B/Patient", "S/Patient"),
                                                     404, 404, 404, OUT, 403, 403, 405),
    row((XP_PATIENT_RS,), tuple(r for r in CLINICAL_RECORDS if r not in PATIENTS + IMAGING),
                                                     403, 403, 403, 403, 403, 403, 405),
    row((XP_PATIENT_RS,), IMAGING,                   403, 403, 403, 403, 405, 405, 405),
]


def administrator(account: str, own: str, other: str) -> list[Row]:
    return [
        row((account,), (f"dir/Organization@{own}", f"dir/Practitioner@{own}"),
                                                     200, 200, 200, IN, 200, 201, 405),
        row((account,), (f"dir/PractitionerRole@{own}",),
                                                     200, 200, 200, IN, 200, 201, 204),
        row((account,), (f"dir/Organization@{other}", f"dir/Practitioner@{other}"),
                                                     200, 200, 200, IN, 403, 403, 405,
            why="another hospital's directory"),
        row((account,), (f"dir/PractitionerRole@{other}",),
                                                     200, 200, 200, IN, 403, 403, 403),
    ]


DIRECTORY_ROWS = [
    row((*CLINICAL, AUDITOR), DIR_UNDELETABLE,       200, 200, 200, IN, 403, 403, 405,
        why="shared for reading, written by administrators only"),
    row((*CLINICAL, AUDITOR), DIR_DELETABLE,         200, 200, 200, IN, 403, 403, 403),
    *administrator(ADMIN_SB, "subei", "xy-people"),
    *administrator(ADMIN_XP, "xy-people", "subei"),
    row(ADMINS, group("dir", "OrganizationAffiliation@subei", "OrganizationAffiliation@yz-tcm"),
                                                     200, 200, 200, IN, 403, 403, 403,
        why="an administrator's ceiling holds OrganizationAffiliation.rs"),
    row((XP_PATIENT_RS,), DIR_UNDELETABLE,           403, 403, 403, 403, 403, 403, 405),
    row((XP_PATIENT_RS,), DIR_DELETABLE,             403, 403, 403, 403, 403, 403, 403),
]
AUDIT_ROWS = [
    row((AUDITOR,), ("AuditEvent",),                 200, 200, 405, IN, 405, 405, 405,
        why="AuditEvent: read, vread and search only"),
    row(CLINICAL, ("AuditEvent",),                   404, 404, 405, OUT, 405, 405, 405,
        why="their scope covers every type; the trail is the audit capability's only"),
    row((*ADMINS, XP_PATIENT_RS), ("AuditEvent",),   403, 403, 405, 403, 405, 405, 405),
]
# fmt: on
TABLE = [
    *OWN,
    *OWN_PATIENT,
    *GRANTED,
    *CLOSED_OR_ENDED,
    *OTHER,
    *NOT_IN_SCOPE,
    *DIRECTORY_ROWS,
    *AUDIT_ROWS,
]

#: What an `_include` must (True) or must not (False) bring in when the account searches the
#: source record by _id: (account, source, _include, target record or reference, included).
INCLUDES = [
    (SB, "A/Task", "Task:focus", "A/ServiceRequest", True),
    (SB, "A/Task", "Task:patient", "A/Patient", True),
    (SB, "A/ServiceRequest", "ServiceRequest:patient", "A/Patient", True),
    (SB, "A/ServiceRequest", "ServiceRequest:supporting-info", "A/DocumentReference", True),
    (SB, "A/ServiceRequest", "ServiceRequest:supporting-info", "A/ImagingStudy", True),
    # The closed (C) and ended (D) referrals' Tasks are out of reach themselves (CLOSED_OR_ENDED);
    # what sp.subei wrote about C's patient no longer brings the patient in.
    (SB, "CS/DocumentReference", "DocumentReference:patient", "C/Patient", False),
    (XP, "S/DocumentReference", "DocumentReference:patient", "A/Patient", True),
    (XP, "A/Task", "Task:focus", "A/ServiceRequest", True),
    (YT, "B/Task", "Task:focus", "B/ServiceRequest", True),
    (YT, "B/ServiceRequest", "ServiceRequest:supporting-info", "B/DocumentReference", True),
    (XP, "A/Patient", "Patient:organization", "Organization/xy-people", True),
    # Organization is outside a Patient.rs token's scope: never in its Bundles.
    (XP_PATIENT_RS, "A/Patient", "Patient:organization", "Organization/xy-people", False),
]
#: Cells where the server disagrees with the documented rule: strict xfails, by test id.
DISAGREES: dict[str, str] = {}

# ---- the cells -------------------------------------------------------------------------------

REGISTRY = build_registry(Settings(demo=True, database_url="sqlite://"))


@dataclass(frozen=True)
class Cell:
    account: str
    record: str
    interaction: str
    expected: int | str
    why: str

    @property
    def id(self) -> str:
        return f"{self.account}|{self.record}|{self.interaction}"


def expand(table: list[Row]) -> list[Cell]:
    """The table as cells, each (account, record, interaction) once; a search row also stands
    for a search with each `_include` of the record's type."""
    found: dict[tuple[str, str, str], Cell] = {}
    for r in table:
        for account, record in itertools.product(r.accounts, r.records):
            for interaction, expected in r.expect.items():
                if expected is None:
                    continue
                names = [interaction]
                if interaction == "search" and expected in (IN, OUT):
                    names += [f"_include={i}" for i in REGISTRY.get(rtype_of(record)).includes]
                for name in names:
                    key = (account, record, name)
                    assert key not in found, f"{key} is in the table twice"
                    found[key] = Cell(account, record, name, expected, r.why)
    return list(found.values())


CELLS = expand(TABLE)


@functools.cache
def hidden_from(account: str) -> frozenset[str]:
    """The records the table says the account may not read."""
    return frozenset(
        c.record
        for c in CELLS
        if c.account == account and c.interaction == "read" and c.expected != 200
    )


def test_the_table_has_every_account_record_and_interaction_once() -> None:
    declared: dict[tuple[str, str], list[str]] = {}
    for r in TABLE:
        for account, record in itertools.product(r.accounts, r.records):
            declared.setdefault((account, record), []).extend(r.expect)
    assert sorted(declared) == sorted(itertools.product(ACCOUNTS, RECORDS))
    for pair, interactions in declared.items():
        assert sorted(interactions) == sorted(INTERACTIONS), pair


# ---- the world: one app and database per backend, records made by real referrals -------------


@dataclass
class World:
    app: FastAPI
    users: dict[str, TestClient]
    #: record -> (type, id)
    ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: record -> what a new record like it needs: its patient, and its referral's request,
    #: hospital and department asked
    facts: dict[str, dict[str, str]] = field(default_factory=dict)

    def ref(self, record: str) -> str:
        """`Type/id` of a record of the table, or the reference itself."""
        if record not in self.ids:
            return record
        rtype, rid = self.ids[record]
        return f"{rtype}/{rid}"

    def keep(self, record: str, rid: str, **facts: str) -> None:
        self.ids[record] = (rtype_of(record), rid)
        self.facts[record] = facts

    def current(self, record: str) -> dict[str, Any]:
        """The record as stored now, read by the server itself (no caller's rules)."""
        services = self.app.state.services
        rtype, rid = self.ids[record]
        with services.db.transaction() as session:
            content = services.fhir.read(rtype, rid, session=session).content
        body: dict[str, Any] = json.loads(content)
        return body

    def copy(self, record: str) -> str:
        """A fresh copy of a directory record, made by the server: what a delete cell deletes,
        so that one cell's success does not change what another cell looks at."""
        services = self.app.state.services
        rtype, _ = self.ids[record]
        body = {k: v for k, v in self.current(record).items() if k not in ("id", "meta")}
        with services.db.transaction(write=True) as session:
            made = services.fhir.create(rtype, body, session=session)
        return str(made.version.id)


def _message(sr_id: str, patient_id: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "payload": [{"contentString": text}],
    }


def refer(
    world: World,
    prefix: str,
    doctor: TestClient,
    specialist: TestClient,
    patient_id: str,
    department: str,
    *,
    study_of: str | None = None,
) -> dict[str, Any]:
    """A referral sent and accepted as the two doctors do it over the FHIR API, with a message
    from the sender; its records kept in `world` as `prefix/Type`. With `study_of` (the
    patient's ID as PACS put it), a CT study stored over DICOMweb is shared too."""
    target = {"subei-cardiology": "subei", "yz-tcm-tcm-internal": "yz-tcm"}[department]
    consent = record_consent(doctor, patient_id, (target,))
    doc = document(doctor, patient_id)
    supporting = [f"DocumentReference/{doc['id']}"]
    made: dict[str, Any] = {"Patient": patient_id, "Consent": consent, "DocumentReference": doc}
    if study_of is not None:
        parts = ct_series(1, patient_id=study_of)
        r = doctor.post("/dicomweb/studies", content=multipart(parts), headers=stow_headers())
        assert r.status_code == 200, r.text
        study = pydicom.dcmread(io.BytesIO(parts[0])).StudyInstanceUID
        supporting.append(f"ImagingStudy/{study}")
        made["ImagingStudy"] = {"id": study}
    sr = create(doctor, request_body(patient_id, performer=department, supporting=supporting))
    task = create(doctor, task_body(sr, target))
    assert specialist.get(f"/fhir/Task/{task['id']}").status_code == 200  # received
    assert move(specialist, task, "accepted").status_code == 200
    message = create(doctor, _message(sr["id"], patient_id, "请问何时可以接收？"))
    made.update(ServiceRequest=sr, Task=task, Communication=message)
    facts = {"patient": patient_id, "sr": sr["id"], "target": target, "department": department}
    for rtype, resource in made.items():
        rid = resource if isinstance(resource, str) else resource["id"]
        world.keep(f"{prefix}/{rtype}", rid, **facts)
    return {**made, "facts": facts}


def sign_in(app: FastAPI, settings: Settings) -> dict[str, TestClient]:
    with app.state.services.db.transaction(write=True) as session:
        secret = register_client(
            session=session, client_id=HIS, name="新源县人民医院 HIS", hospital_id="xy-people"
        )
    users: dict[str, TestClient] = {}
    for account in ACCOUNTS:
        if account == HIS:
            with TestClient(app) as anonymous:
                r = anonymous.post(
                    "/auth/token", data={"grant_type": "client_credentials"}, auth=(HIS, secret)
                )
            assert r.status_code == 200, r.text
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        elif account == XP_PATIENT_RS:
            headers = bearer(settings, XP, "user/Patient.rs")
        else:
            headers = bearer(settings, account)
        users[account] = TestClient(app, headers=headers).__enter__()
    return users


def build_world(app: FastAPI, settings: Settings) -> World:
    world = World(app, sign_in(app, settings))
    xp, xt, sb, yt = (world.users[a] for a in (XP, XT, SB, YT))

    a = refer(world, "A", xp, sb, "demo-aygul", "subei-cardiology", study_of=AYGUL)
    registered = create(sb, patient("周晓梅", hospital_id="subei", number=identity_number()))
    world.keep("S/Patient", registered["id"])
    note = document(sb, "demo-aygul", CONSULT_NOTE, "会诊意见")
    world.keep("S/DocumentReference", note["id"], **a["facts"])
    reply = create(sb, _message(a["facts"]["sr"], "demo-aygul", "下周一可收入院。"))
    world.keep("S/Communication", reply["id"], **a["facts"])

    refer(world, "B", xt, yt, "demo-ma-xiulan", "yz-tcm-tcm-internal")

    c = refer(world, "C", xp, sb, "demo-wang-jianguo", "subei-cardiology")
    c_note = document(sb, "demo-wang-jianguo", CONSULT_NOTE, "会诊意见")
    world.keep("CS/DocumentReference", c_note["id"], **c["facts"])
    cancelled = move(xp, c["Task"], "cancelled", statusReason={"text": "家属要求转往他院"})
    assert cancelled.status_code == 200, cancelled.text

    d = refer(world, "D", xp, sb, "demo-memet", "subei-cardiology")
    assert move(sb, d["Task"], "in-progress").status_code == 200
    summary = document(xp, "demo-memet", CONSULT_NOTE, "出院小结")
    outcome = {"reference": f"DocumentReference/{summary['id']}"}
    output = {"type": {"text": "outcome"}, "valueReference": outcome}
    completed = move(sb, d["Task"], "completed", output=[output])
    assert completed.status_code == 200, completed.text
    for kept in ("D/Consent", "D/Communication"):  # not in the table: D is about the grant
        del world.ids[kept], world.facts[kept]

    for record, rid in DIRECTORY.items():
        world.keep(record, rid)
    trail = world.users[AUDITOR].get(
        "/fhir/AuditEvent", params={"entity": world.ref("A/ServiceRequest"), "_count": "1"}
    )
    assert trail.status_code == 200 and trail.json()["entry"], trail.text
    world.keep("AuditEvent", trail.json()["entry"][0]["resource"]["id"])
    assert sorted(world.ids) == sorted(RECORDS)
    return world


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, templates: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One app and database per backend for the whole module (conftest.py's templates)."""
    if request.param == "postgresql":
        if not PG_URL:
            skip_or_fail("PostgreSQL: set ALLIANCE_TEST_DATABASE_URL to run (CI does)")
        url = templates.postgresql()
    else:
        url = templates.sqlite()
    blobs: Path = tmp_path_factory.mktemp("matrix-blobs")
    settings = Settings(
        database_url=url,
        storage_url=blobs.as_uri(),
        base_url="http://testserver",
        demo=True,
        grant_days_after_completion=0,
    )
    app = create_app(settings)
    users: dict[str, TestClient] = {}
    try:
        made = build_world(app, settings)
        users = made.users
        yield made
    finally:
        for client in users.values():
            client.__exit__(None, None, None)
        app.state.services.db.dispose()
        if request.param == "postgresql":
            templates.drop(url)


# ---- the interactions ------------------------------------------------------------------------


def _attachment(client: TestClient, data: bytes, ctype: str) -> dict[str, Any]:
    """An upload of the caller's own hospital, or for an account that may not upload a stand-in
    (its create is refused before any attachment is looked at)."""
    r = client.post("/api/attachments", content=data, headers={"Content-Type": ctype})
    if r.status_code == 201:
        attachment: dict[str, Any] = r.json()
        return attachment
    return {"contentType": ctype, "url": "http://testserver/api/attachments/none"}


def new_like(world: World, account: str, record: str) -> dict[str, Any]:
    """A new record like `record`, by `account`: of the same hospital (Patient, directory), or
    about the same patient in the same referral (the other clinical types)."""
    rtype = rtype_of(record)
    client = world.users[account]
    if rtype == "Patient":
        keeper = world.current(record)["managingOrganization"]["reference"].split("/")[1]
        return patient("李娜", hospital_id=keeper, number=identity_number())
    if record.startswith("dir/"):
        body = {k: v for k, v in world.current(record).items() if k not in ("id", "meta")}
        if rtype == "Organization":
            body["name"] = f"{body['name']}（新）"
        return body
    if rtype in ("ImagingStudy", "AuditEvent"):
        return world.current(record)  # not creatable at all: refused before the body matters
    facts = world.facts[record]
    patient_id = facts["patient"]
    if rtype == "DocumentReference":
        return {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": CONSULT_NOTE}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "date": "2026-11-30T10:00:00+08:00",
            "content": [{"attachment": _attachment(client, PDF, "application/pdf")}],
        }
    if rtype == "Consent":
        form = _attachment(client, PNG, "image/png")
        return consent_body(patient_id, form, (facts["target"],))
    if rtype == "ServiceRequest":
        return request_body(patient_id, performer=facts["department"])
    if rtype == "Task":
        request = {"id": facts["sr"], "subject": {"reference": f"Patient/{patient_id}"}}
        return task_body(request, facts["target"], "draft")
    if rtype == "Communication":
        return _message(facts["sr"], patient_id, "补充检查结果见附件。")
    raise AssertionError(f"no new record like {record}")


def _refs(bundle: dict[str, Any], mode: str) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    ]


def _update(world: World, client: TestClient, record: str) -> int:
    body = world.current(record)
    if rtype_of(record) == "Task":
        # A referral's Task changes only by a move, or in its notes and output
        # (referral.service): a note makes the PUT a change that needs no move.
        body["note"] = [*body.get("note", []), {"text": "已电话随访"}]
    return client.put(f"/fhir/{world.ref(record)}", json=body).status_code


def _search(world: World, cell: Cell) -> int | str:
    rtype, rid = world.ids[cell.record]
    params = {"_id": rid}
    if cell.interaction.startswith("_include="):
        params["_include"] = cell.interaction.removeprefix("_include=")
    r = world.users[cell.account].get(f"/fhir/{rtype}", params=params)
    if r.status_code != 200:
        return r.status_code
    included = {world.ref(ref) for ref in _refs(r.json(), "include")}
    leaked = included & {world.ref(h) for h in hidden_from(cell.account)}
    assert not leaked, f"{cell.id}: included what the account may not read: {leaked}"
    return IN if world.ref(cell.record) in _refs(r.json(), "match") else OUT


def _get(path: str) -> Callable[[World, Cell], int]:
    return lambda w, c: w.users[c.account].get(f"/fhir/{w.ref(c.record)}{path}").status_code


def _create(world: World, cell: Cell) -> int:
    body = new_like(world, cell.account, cell.record)
    return world.users[cell.account].post(f"/fhir/{rtype_of(cell.record)}", json=body).status_code


def _delete(world: World, cell: Cell) -> int:
    rtype, rid = world.ids[cell.record]
    if cell.record.startswith("dir/"):  # no clinical type allows delete: the record is safe
        rid = world.copy(cell.record)
    return world.users[cell.account].delete(f"/fhir/{rtype}/{rid}").status_code


#: How each interaction of the table is done, as the cell's account.
RUNNERS: dict[str, Callable[[World, Cell], int | str]] = {
    "read": _get(""),
    "vread": _get("/_history/1"),
    "history": _get("/_history"),
    "search": _search,
    "update": lambda w, c: _update(w, w.users[c.account], c.record),
    "create": _create,
    "delete": _delete,
}


def _param(cell_id: str, *values: Any) -> Any:
    why = DISAGREES.get(cell_id)
    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
    return pytest.param(*values, id=cell_id, marks=marks)


@pytest.mark.parametrize("cell", [_param(c.id, c) for c in CELLS])
def test_access(world: World, cell: Cell) -> None:
    runner = RUNNERS["search" if cell.interaction.startswith("_include=") else cell.interaction]
    assert runner(world, cell) == cell.expected, cell.why


@pytest.mark.parametrize(
    ("account", "source", "include", "target", "included"),
    [_param(f"{a}|{s}|_include={i}|{t}", a, s, i, t, y) for a, s, i, t, y in INCLUDES],
)
def test_include(
    world: World, account: str, source: str, include: str, target: str, included: bool
) -> None:
    rtype, rid = world.ids[source]
    r = world.users[account].get(f"/fhir/{rtype}", params={"_id": rid, "_include": include})
    assert r.status_code == 200, r.text
    assert _refs(r.json(), "match") == [world.ref(source)]
    assert (world.ref(target) in _refs(r.json(), "include")) is included


@pytest.mark.parametrize("account", [_param(f"{a}|every _include", a) for a in ACCOUNTS])
def test_no_include_brings_in_what_the_account_may_not_read(world: World, account: str) -> None:
    """Every `_include` of every type (a plain search of a type without any), without _id: 200
    for the types in the token's scope (403 for the others), and no record the table hides
    from the account, nor any record of a type outside the token's scope, in the Bundle."""
    hidden = {world.ref(h) for h in hidden_from(account)}
    searchable = SEARCHABLE[account]
    client = world.users[account]
    for definition in REGISTRY.definitions():
        allowed = searchable is None or definition.type in searchable
        for include in definition.includes or [None]:
            params = {"_count": "200", **({"_include": include} if include else {})}
            r = client.get(f"/fhir/{definition.type}", params=params)
            assert r.status_code == (200 if allowed else 403), (definition.type, include, r.text)
            if not allowed:
                continue
            served = set(_refs(r.json(), "match")) | set(_refs(r.json(), "include"))
            assert not served & hidden, (include, served & hidden)
            if searchable is not None:
                outside = {s for s in served if s.split("/")[0] not in searchable}
                assert not outside, (include, outside)
