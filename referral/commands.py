"""What a doctor does with a referral, as commands every face calls: the portal's pages, the
demo seed and the tests open, move, message and send down referrals through these functions,
so the resources they make are built in one place.

Each command takes the caller's `OperationContext` (the transaction, the store, who acts, what
they may see, the write check) and writes through the FHIR store, so every rule and hook of
`referral.service` runs exactly as it does for any FHIR client. Commands never commit; they
raise `alliance.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alliance import clock
from alliance.codes import ICD10_CN, REQUEST_CATEGORY
from alliance.errors import Conflict, Invalid
from alliance.fhir.registry import OperationContext, Resource
from alliance.fhir.types import Version
from alliance.fhir.values import instant
from alliance.records import keeper_of, reference_id
from referral.models import Referral
from referral.service import target_hospital
from referral.workflow import Move, moves_from

LOINC = "http://loinc.org"
#: LOINC document kinds the referral pages file (FHIR R4 DocumentReference.type).
CONSULT_NOTE = "11488-4"
DISCHARGE_SUMMARY = "18842-5"
SUMMARY_OF_EPISODE = "34133-9"
CONSENT_DOCUMENT = "59284-0"
CONSENTER_RELATIONSHIP = "https://fhir.yzxy-alliance.cn/StructureDefinition/consenter-relationship"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


@dataclass(frozen=True)
class Diagnosis:
    """A diagnosis as the doctor gave it: an ICD-10 国家临床版2.0 code from the alliance's list,
    or free text, which stays text (FHIR R4 CodeableConcept.text) and is never passed off as a
    code."""

    display: str
    code: str | None = None

    @classmethod
    def from_entry(cls, entry: str, known: Mapping[str, str]) -> Diagnosis:
        """What a doctor typed or picked: "CODE name" or a bare code from `known` is coded;
        anything else is free text."""
        text = " ".join(entry.split())
        head, _, rest = text.partition(" ")
        if head in known:
            return cls(display=rest or known[head], code=head)
        return cls(display=text)

    def concept(self) -> Resource:
        if self.code is None:
            return {"text": self.display}
        return {
            "coding": [
                {"system": ICD10_CN, "version": "2.0", "code": self.code, "display": self.display}
            ],
            "text": self.display,
        }


@dataclass(frozen=True)
class Consenter:
    """Who signed the consent: the patient (no name needed) or someone for them, named, with
    their relationship (HL7 v3 RoleCode: FTH, MTH, SPS, GUARD, ...)."""

    relationship: str = "patient"
    name: str = ""

    def performer(self, patient_id: str) -> Resource:
        if self.relationship == "patient":
            return {"reference": f"Patient/{patient_id}"}
        if not self.name.strip():
            raise Invalid(
                "name who signed the consent for the patient",
                expression=["Consent.performer"],
                rule="consent-signer-name",
            )
        return {
            "display": self.name.strip(),
            "extension": [
                {
                    "url": CONSENTER_RELATIONSHIP,
                    "valueCodeableConcept": {
                        "coding": [{"system": ROLE_CODE, "code": self.relationship}]
                    },
                }
            ],
        }


@dataclass(frozen=True)
class ReferralRequest:
    """What a county doctor asks: of which department, for which patient, why, how urgently,
    with the signed consent (an uploaded file's FHIR Attachment) and what to share."""

    patient_id: str
    department_id: str
    diagnosis: Diagnosis
    summary: str
    consent_form: Resource
    category: str = "up-referral"
    priority: str = "routine"
    consenter: Consenter = field(default_factory=Consenter)
    #: Attachments to file as DocumentReferences and share (title, attachment).
    documents: Sequence[tuple[str, Resource]] = ()
    #: ImagingStudy ids to share.
    studies: Sequence[str] = ()


@dataclass(frozen=True)
class Opened:
    task_id: str
    request_id: str
    consent_id: str


def requester(acting: OperationContext) -> Resource:
    """The doctor making a request: their Practitioner, or their name when they have none."""
    practitioner = acting.actor.practitioner_id
    if practitioner:
        return {"reference": f"Practitioner/{practitioner}"}
    return {"display": acting.actor.username}


def file_document(
    acting: OperationContext,
    attachment: Resource,
    subject: Resource,
    loinc: str,
    title: str,
) -> Version:
    """An uploaded file (its FHIR Attachment, `alliance.attachments.service.fhir_attachment`)
    presented as a DocumentReference about `subject` (FHIR R4 documentreference.html)."""
    return acting.create(
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"coding": [{"system": LOINC, "code": loinc, "display": title}]},
            "subject": subject,
            "date": instant(clock.now()),
            "content": [{"attachment": attachment}],
        },
    )


def hospital_of_department(acting: OperationContext, department_id: str) -> str:
    """The hospital a department belongs to (a hospital asked directly is its own), if the
    caller can see the department."""
    acting.read("Organization", department_id)
    return target_hospital(
        acting.session, {"performer": [{"reference": f"Organization/{department_id}"}]}
    )


def record_consent(
    acting: OperationContext,
    *,
    patient_id: str,
    recipient: str,
    form: Resource,
    consenter: Consenter,
) -> Version:
    """The patient's consent to share their records with `recipient` for treatment
    (FHIR R4 Consent, scope patient-privacy, provision permit to the recipient, purpose TREAT),
    with the scanned signed form as its source (DOMAIN.md: 知情同意)."""
    return acting.create(
        {
            "resourceType": "Consent",
            "status": "active",
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
            "category": [{"coding": [{"system": LOINC, "code": CONSENT_DOCUMENT}]}],
            "patient": {"reference": f"Patient/{patient_id}"},
            "dateTime": instant(clock.now()),
            "performer": [consenter.performer(patient_id)],
            "sourceAttachment": form,
            "provision": {
                "type": "permit",
                "actor": [
                    {
                        "role": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "v3-ParticipationType",
                                    "code": "IRCP",
                                }
                            ]
                        },
                        "reference": {"reference": f"Organization/{recipient}"},
                    }
                ],
                "purpose": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "TREAT",
                    }
                ],
            },
        },
    )


def open_referral(acting: OperationContext, asked: ReferralRequest) -> Opened:
    """Send a referral or a teleconsult request: the consent, the documents it shares, the
    ServiceRequest and its Task, sent (status requested) in one unit of work. The referral
    rules (consent naming the hospital, no re-sharing, the deadline) run on the writes."""
    if asked.category not in ("up-referral", "teleconsult"):
        raise Invalid(
            "a county doctor sends an up-referral or a teleconsult request",
            rule="referral-category",
        )
    if not asked.summary.strip():
        raise Invalid(
            "say why the patient is referred",
            expression=["ServiceRequest.note"],
            rule="referral-summary",
        )
    hospital = hospital_of_department(acting, asked.department_id)
    subject = {"reference": f"Patient/{asked.patient_id}"}
    consent = record_consent(
        acting,
        patient_id=asked.patient_id,
        recipient=hospital,
        form=asked.consent_form,
        consenter=asked.consenter,
    )
    shared = [
        {
            "reference": "DocumentReference/"
            + file_document(acting, attachment, subject, SUMMARY_OF_EPISODE, title).id
        }
        for title, attachment in asked.documents
    ]
    shared += [{"reference": f"ImagingStudy/{study}"} for study in asked.studies]
    sr = acting.create(
        {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "category": [{"coding": [{"system": REQUEST_CATEGORY, "code": asked.category}]}],
            "priority": asked.priority,
            "subject": subject,
            "requester": requester(acting),
            "performer": [{"reference": f"Organization/{asked.department_id}"}],
            "reasonCode": [asked.diagnosis.concept()],
            "note": [{"text": asked.summary.strip()}],
            "supportingInfo": shared,
        },
    )
    task = acting.create(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": asked.priority,
            "focus": {"reference": f"ServiceRequest/{sr.id}"},
            "for": subject,
            "requester": requester(acting),
            "owner": {"reference": f"Organization/{hospital}"},
            "description": f"{asked.diagnosis.display}：{asked.summary.strip()[:120]}",
        },
    )
    return Opened(task_id=task.id, request_id=sr.id, consent_id=consent.id)


def party_of(hospital_id: str, task: Resource) -> str | None:
    """The hospital's part in a referral: `placer` (it sent it), `owner` (it was asked), or
    None."""
    if hospital_id == reference_id(task.get("owner"), "Organization"):
        return "owner"
    if hospital_id == keeper_of(task):
        return "placer"
    return None


def moves_for(acting: OperationContext, task: Resource) -> list[Move]:
    """The moves the workflow allows the caller's hospital from the Task's state now
    (referral.workflow; the server checks them again on the write). Receiving is not among
    them: the asked hospital receives a referral by opening it."""
    party = party_of(acting.actor.hospital_id, task)
    row = acting.session.get(Referral, task.get("id"))
    if party is None or row is None:
        return []
    return [
        m
        for m in moves_from(row.status, row.held_from)
        if m.party in (party, "either") and m.target != "received"
    ]


def move_referral(
    acting: OperationContext,
    task_id: str,
    target: str,
    *,
    reason: str = "",
    seen_version: str | None = None,
    output: Resource | None = None,
) -> Version:
    """Move a referral's Task to `target` (FHIR R4 Task state machine, referral.workflow):
    with the reason a decline or cancellation needs, and the document a completion files.
    `seen_version` is the version the doctor decided on: a change since is a conflict, so
    two specialists deciding at once do not overwrite each other."""
    current = acting.read("Task", task_id)
    if seen_version and seen_version != str(current.version):
        raise Conflict(
            "the referral changed while you were looking at it; see it again",
            rule="referral-changed",
        )
    task = current.resource()
    task["status"] = target
    if reason.strip():
        task["statusReason"] = {"text": reason.strip()}
    if output is not None:
        task["output"] = [*task.get("output", []), output]
    return acting.update(task)


def complete_with_opinion(
    acting: OperationContext,
    task_id: str,
    attachment: Resource,
    *,
    seen_version: str | None = None,
) -> Version:
    """Complete an up-referral with the receiving hospital's opinion (a file) as its output."""
    task = acting.read("Task", task_id).resource()
    doc = file_document(acting, attachment, task["for"], CONSULT_NOTE, "会诊意见")
    return move_referral(
        acting,
        task_id,
        "completed",
        seen_version=seen_version,
        output={
            "type": {"text": "opinion"},
            "valueReference": {"reference": f"DocumentReference/{doc.id}"},
        },
    )


def send_down(
    acting: OperationContext,
    up_task_id: str,
    *,
    discharge_summary: Resource,
    plan: Sequence[str],
    note: str = "",
) -> Opened:
    """A down-referral from an up-referral this hospital took: the discharge summary (an
    uploaded file's Attachment) and the follow-up / rehabilitation plan (a CarePlan, one
    activity per line), back to the hospital that sent the patient up (DOMAIN.md 下转)."""
    lines = [line.strip() for line in plan if line.strip()]
    if not lines:
        raise Invalid(
            "a down-referral carries a follow-up plan",
            expression=["CarePlan.activity"],
            rule="down-referral-plan",
        )
    up_task = acting.read("Task", up_task_id).resource()
    up = acting.read(
        "ServiceRequest", reference_id(up_task.get("focus"), "ServiceRequest") or ""
    ).resource()
    home = keeper_of(up)
    doc = file_document(acting, discharge_summary, up["subject"], DISCHARGE_SUMMARY, "出院小结")
    care_plan = acting.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": up["subject"],
            "title": "康复及随访计划",
            "activity": [
                {"detail": {"status": "scheduled", "description": line}} for line in lines
            ],
        },
    )
    down = acting.create(
        {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "category": [{"coding": [{"system": REQUEST_CATEGORY, "code": "down-referral"}]}],
            "priority": "routine",
            "subject": up["subject"],
            "requester": requester(acting),
            "basedOn": [{"reference": f"ServiceRequest/{up['id']}"}],
            "performer": [{"reference": f"Organization/{home}"}],
            "reasonCode": up.get("reasonCode", []),
            "note": [{"text": note.strip() or "下转康复"}],
            "supportingInfo": [
                {"reference": f"DocumentReference/{doc.id}"},
                {"reference": f"CarePlan/{care_plan.id}"},
            ],
        },
    )
    task = acting.create(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": "routine",
            "focus": {"reference": f"ServiceRequest/{down.id}"},
            "for": up["subject"],
            "requester": requester(acting),
            "owner": {"reference": f"Organization/{home}"},
            "description": "下转：" + lines[0][:100],
        },
    )
    return Opened(task_id=task.id, request_id=down.id, consent_id="")


def post_message(acting: OperationContext, task_id: str, text: str, signature: str) -> Version:
    """A message between the two hospitals on a referral (FHIR R4 Communication basedOn its
    ServiceRequest), signed as the doctors sign: `姓名 · 医院`."""
    if not text.strip():
        raise Invalid(
            "a message says something", expression=["Communication.payload"], rule="message-empty"
        )
    return message_on(acting, task_id, [{"contentString": text.strip()}], signature)


def message_on(
    acting: OperationContext, task_id: str, payload: Sequence[Resource], signature: str
) -> Version:
    """A message on a referral (FHIR R4 Communication basedOn its ServiceRequest, about its
    patient) with `payload`, sent now and signed `姓名 · 医院`."""
    task = acting.read("Task", task_id).resource()
    return acting.create(
        {
            "resourceType": "Communication",
            "status": "completed",
            "basedOn": [task["focus"]],
            "subject": task["for"],
            "sent": instant(clock.now()),
            "sender": {"display": signature},
            "payload": list(payload),
        },
    )


def add_studies(
    acting: OperationContext, task_id: str, study_ids: Sequence[str], signature: str
) -> Version:
    """Images uploaded after a referral was sent, added to it while it is open: a message on
    the referral (FHIR R4 Communication basedOn its ServiceRequest) carrying each ImagingStudy
    as a payload contentReference, signed as the doctors sign. The referral rules
    (referral.service.check_communication, after_communication) refuse it once the referral
    has ended and open the studies to the hospital asked under the referral's own grant."""
    chosen = list(dict.fromkeys(s.strip() for s in study_ids if s.strip()))
    if not chosen:
        raise Invalid(
            "choose the studies to add", expression=["Communication.payload"], rule="study-none"
        )
    carried = [{"contentReference": {"reference": f"ImagingStudy/{s}"}} for s in chosen]
    return message_on(acting, task_id, carried, signature)
