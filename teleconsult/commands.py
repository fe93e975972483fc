"""What a specialist does with a teleconsult, as commands every face calls (the portal's
pages, the tests): answer the booked consult, and write and sign the opinion. Each takes the
caller's `OperationContext` and writes through the FHIR store, so the teleconsult rules
(teleconsult.responses, teleconsult.opinion) run as they do for any FHIR client. Booking is
the `$find` / `$book` operations (teleconsult.operations)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from alliance.errors import Forbidden
from alliance.fhir.registry import OperationContext, Resource
from alliance.fhir.types import Version
from referral.commands import CONSULT_NOTE, LOINC, Diagnosis
from teleconsult.calendars import TEMPLATE_EXTENSION


def answer_consult(acting: OperationContext, appointment_id: str) -> Version:
    """The specialist accepts the consult booked with them (FHIR R4 AppointmentResponse,
    participantStatus accepted), as the PractitionerRole they consult in."""
    practitioner = acting.actor.practitioner_id
    roles = (
        acting.store.search(
            "PractitionerRole",
            [("practitioner", f"Practitioner/{practitioner}")],
            session=acting.session,
            default_count=5,
            max_count=5,
            visible=acting.visible,
        ).matches
        if practitioner
        else []
    )
    if not roles:
        raise Forbidden("only the specialist answers a consult", rule="consult-specialist-only")
    return acting.create(
        {
            "resourceType": "AppointmentResponse",
            "appointment": {"reference": f"Appointment/{appointment_id}"},
            "actor": {"reference": f"PractitionerRole/{roles[0].id}"},
            "participantStatus": "accepted",
        }
    )


def sign_opinion(
    acting: OperationContext, task_id: str, conclusion: str, diagnosis: Diagnosis | None
) -> Version:
    """The opinion written and signed: a DiagnosticReport (LOINC 11488-4 consult note) made
    final, which teleconsult.opinion files as the consult's output, signs and completes."""
    task = acting.read("Task", task_id).resource()
    report: Resource = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {"coding": [{"system": LOINC, "code": CONSULT_NOTE, "display": "会诊意见"}]},
        "subject": task["for"],
        "basedOn": [task["focus"]],
        "conclusion": conclusion.strip(),
    }
    if diagnosis is not None:
        report["conclusionCode"] = [diagnosis.concept()]
    draft = acting.create(report)
    return acting.update({**draft.resource(), "status": "final"})


def consult_schedule(
    role_id: str, hours: Sequence[Resource], *, start: date, slot_minutes: int = 30
) -> Resource:
    """A specialist's consult Schedule (FHIR R4 Schedule, actor their PractitionerRole): the
    weekly hours they take consults (each as a HealthcareService availableTime: daysOfWeek,
    availableStartTime, availableEndTime) as the alliance's consult templates, cut into
    `slot_minutes` slots from `start` on; teleconsult.calendars checks it."""
    return {
        "resourceType": "Schedule",
        "extension": [
            {
                "url": TEMPLATE_EXTENSION,
                "extension": [
                    *({"url": "daysOfWeek", "valueCode": d} for d in span["daysOfWeek"]),
                    {"url": "availableStartTime", "valueTime": span["availableStartTime"]},
                    {"url": "availableEndTime", "valueTime": span["availableEndTime"]},
                    {"url": "slotMinutes", "valuePositiveInt": slot_minutes},
                ],
            }
            for span in hours
        ],
        "active": True,
        "actor": [{"reference": f"PractitionerRole/{role_id}"}],
        "planningHorizon": {"start": start.isoformat()},
        "comment": "远程会诊",
    }


def open_consult_schedule(
    acting: OperationContext, role_id: str, hours: Sequence[Resource], *, start: date
) -> Version:
    """A specialist starts taking teleconsults: their consult Schedule, made by their
    hospital's administrator, so requests for their department are offered their times."""
    return acting.create(consult_schedule(role_id, hours, start=start))
