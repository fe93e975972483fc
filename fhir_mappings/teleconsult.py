"""The FHIR face of teleconsults: HealthcareService (a hospital's working calendar), Schedule,
Slot (derived), Appointment with `$find`, `$hold` and `$book` (IHE ITI-115/116/117),
AppointmentResponse, Encounter and DiagnosticReport (the signed opinion): per type its search
parameters, how operation parameters and search values are read, and the resources derived
from what the domain (teleconsult) finds. No I/O of its own.

Provenance, ServiceRequest, Task, Consent and DocumentReference are the referral's
(fhir_mappings.referral): a teleconsult is a referral of category teleconsult.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.appointmentresponse import AppointmentResponse
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.healthcareservice import HealthcareService
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.slot import Slot
from sqlalchemy import ColumnElement

from alliance.config import Settings
from alliance.fhir.models import ResourceRow
from alliance.fhir.registry import (
    ALL_INTERACTIONS,
    AfterWrite,
    Operation,
    Resource,
    ResourceDefinition,
    SearchParam,
)
from alliance.records import keeper_of, record_patient_of, reference_id
from fhir_mappings.scheduling import AppointmentOperations, SlotProvider
from teleconsult.service import Teleconsult

NO_DELETE = ALL_INTERACTIONS - {"delete"}
IHE = "https://profiles.ihe.net/ITI/Scheduling/OperationDefinition"


def _patient(path: str) -> Any:
    def patient_of(resource: Resource) -> str | None:
        return reference_id(resource.get(path), "Patient")

    return patient_of


def _appointment_patient(appt: Resource) -> str | None:
    for part in appt.get("participant") or []:
        found = reference_id(part.get("actor"), "Patient")
        if found:
            return found
    return None


# ---- definitions ------------------------------------------------------------------------------


def definitions(settings: Settings, tele: Teleconsult) -> list[ResourceDefinition]:
    """The teleconsult types, their hooks those of `tele` (built once, with the registry)."""
    calendars, appointments, opinion = tele.calendars, tele.appointments, tele.opinion
    responses, encounters = tele.responses, tele.encounters
    operations = AppointmentOperations(tele)
    patient_ref = SearchParam("patient", "reference", "subject", "The patient", ("Patient",))
    subject_ref = SearchParam("subject", "reference", "subject", "The patient", ("Patient",))
    based_on = SearchParam(
        "based-on", "reference", "basedOn", "The teleconsult request", ("ServiceRequest",)
    )

    def keeper_condition(value: str) -> ColumnElement[bool]:
        return ResourceRow.organization_id == value.rsplit("/", 1)[-1]

    return [
        ResourceDefinition(
            "HealthcareService",
            HealthcareService,
            [
                SearchParam(
                    "organization",
                    "reference",
                    "providedBy",
                    "The hospital whose calendar it is",
                    ("Organization",),
                ),
                SearchParam("active", "token", "active", "Whether the calendar is in use"),
                SearchParam("service-category", "token", "category", "teleconsult"),
                SearchParam("name", "string", "name", "Name"),
            ],
            "A hospital's teleconsult working calendar: weekly hours (availableTime) in the "
            "hospital's own time zone (extension working-time-zone: Asia/Shanghai, or "
            "Asia/Urumqi for a Xinyuan site keeping Xinjiang hours), holidays and closures "
            "(notAvailable). One per hospital; its administrators edit it.",
            interactions=NO_DELETE,
            access="directory",
            prepare=calendars.prepare_service,
            on_write=calendars.check_service,
            organization_of=lambda r: reference_id(r.get("providedBy"), "Organization"),
        ),
        ResourceDefinition(
            "Schedule",
            Schedule,
            [
                SearchParam(
                    "actor",
                    "reference",
                    "actor",
                    "The specialist (PractitionerRole)",
                    ("PractitionerRole",),
                ),
                SearchParam("active", "token", "active", "Whether it offers slots"),
                SearchParam("specialty", "token", "specialty", "Specialty (诊疗科目)"),
                SearchParam("service-category", "token", "serviceCategory", "teleconsult"),
                SearchParam("date", "date", "planningHorizon", "The planning horizon"),
                SearchParam(
                    "organization",
                    "reference",
                    "actor",
                    "The specialist's hospital",
                    ("Organization",),
                    condition=keeper_condition,
                ),
            ],
            "A specialist's consult schedule: consult templates (extension consult-template: "
            "daysOfWeek, availableStartTime, availableEndTime in the hospital's zone, "
            "slotMinutes, default 30) within the planning horizon. Its hospital's "
            "administrators edit it; Slots are derived from it.",
            interactions=NO_DELETE,
            access="directory",
            prepare=calendars.prepare_schedule,
            on_write=calendars.check_schedule,
            organization_of=keeper_of,
        ),
        ResourceDefinition(
            "Slot",
            Slot,
            [
                SearchParam("schedule", "reference", "schedule", "The Schedule", ("Schedule",)),
                SearchParam(
                    "start",
                    "date",
                    "start",
                    (
                        "When it starts (every date prefix: eq ne gt lt ge le sa eb ap); from "
                        "now on, at most the configured days ahead; default the next 14 days"
                    ),
                ),
                SearchParam("status", "token", "status", "free, busy, busy-tentative"),
                SearchParam(
                    "specialty", "token", "specialty", "The specialty of the schedule's actor"
                ),
                SearchParam(
                    "organization",
                    "reference",
                    "schedule",
                    "The hospital of the schedule's actor",
                    ("Organization",),
                ),
            ],
            "Consult slots, derived from the Schedules' templates within the hospital's working "
            "hours, less closures; busy while booked, busy-tentative while held. Read-only: "
            "book them with Appointment/$hold and $book.",
            interactions=frozenset({"read", "vread", "search-type"}),
            access="directory",
            provider=SlotProvider(settings.teleconsult_find_max_days),
        ),
        ResourceDefinition(
            "Appointment",
            Appointment,
            [
                SearchParam("date", "date", "start", "When it starts"),
                SearchParam(
                    "status", "token", "status", "pending, booked, arrived, fulfilled, ..."
                ),
                SearchParam(
                    "patient", "reference", "participant.actor", "The patient", ("Patient",)
                ),
                SearchParam(
                    "actor",
                    "reference",
                    "participant.actor",
                    "Any participant",
                    ("Patient", "Practitioner", "PractitionerRole", "RelatedPerson"),
                ),
                SearchParam(
                    "practitioner",
                    "reference",
                    "participant.actor",
                    "A participating practitioner, named or as the specialist through a role",
                    ("Practitioner",),
                    condition=appointments.practitioner_condition,
                ),
                SearchParam(
                    "practitioner-role",
                    "reference",
                    "participant.actor",
                    "The specialist",
                    ("PractitionerRole",),
                ),
                SearchParam("part-status", "token", "participant.status", "Participant answer"),
                based_on,
                SearchParam("slot", "reference", "slot", "A slot it takes", ("Slot",)),
                SearchParam("specialty", "token", "specialty", "Specialty"),
                SearchParam(
                    "upcoming",
                    "token",
                    "start",
                    "Booked or under way, starting within the next N hours (1-168); with "
                    "practitioner=Practitioner/{me}: my consults of the next 24 hours",
                    condition=appointments.upcoming_condition,
                ),
            ],
            "A teleconsult booking (IHE ITI Scheduling): $find proposes times free for the "
            "specialist and inside both sites' working hours, $hold holds one, $book books it "
            "(or POST an Appointment on free slots). Reschedule by new slots, cancel with a "
            "reason, noshow after the start; the video room (virtualService) is shown to "
            "participants only.",
            interactions=NO_DELETE,
            prepare=appointments.prepare_appointment,
            on_write=appointments.check_appointment,
            after_write=[appointments.after_appointment],
            present_to=tele.presentation.present_appointments,
            patient_of=_appointment_patient,
            organization_of=keeper_of,
            writers=appointments.appointment_writers,
            versioned_updates=True,
            operations={
                "find": Operation(
                    "find",
                    f"{IHE}/appointment-find",
                    "IHE ITI-115: proposed Appointments inside both sites' working hours",
                    "search-type",
                    operations.find,
                    affects_state=False,
                ),
                "hold": Operation(
                    "hold",
                    f"{IHE}/appointment-hold",
                    "IHE ITI-116: hold a proposed Appointment (expires)",
                    "create",
                    operations.hold,
                ),
                "book": Operation(
                    "book",
                    f"{IHE}/appointment-book",
                    "IHE ITI-117: book a held or proposed Appointment",
                    "create",
                    operations.book,
                ),
            },
        ),
        ResourceDefinition(
            "AppointmentResponse",
            AppointmentResponse,
            [
                SearchParam(
                    "appointment", "reference", "appointment", "The Appointment", ("Appointment",)
                ),
                SearchParam("actor", "reference", "actor", "Who answers"),
                SearchParam("part-status", "token", "participantStatus", "The answer"),
            ],
            "A participant's answer to a consult appointment: accepted, tentative, or declined "
            "with a reason (comment); the specialist declining cancels the appointment, "
            "accepting accepts the consult request. Answers are not edited: answer again.",
            interactions=frozenset({"read", "vread", "history-instance", "create", "search-type"}),
            prepare=responses.prepare_response,
            on_write=responses.check_response,
            after_write=[responses.after_response],
            patient_of=record_patient_of,
            organization_of=keeper_of,
        ),
        ResourceDefinition(
            "Encounter",
            Encounter,
            [
                patient_ref,
                subject_ref,
                SearchParam("status", "token", "status", "in-progress, finished"),
                SearchParam("class", "token", "class", "VR (virtual)"),
                SearchParam(
                    "appointment", "reference", "appointment", "The Appointment", ("Appointment",)
                ),
                based_on,
                SearchParam("date", "date", "period", "When it took place"),
                SearchParam(
                    "service-provider",
                    "reference",
                    "serviceProvider",
                    "The specialist's hospital",
                    ("Organization",),
                ),
            ],
            "The video consult (class VR): created in-progress when the specialist starts it, "
            "finished when it ends; the server keeps its period.",
            interactions=NO_DELETE,
            prepare=encounters.prepare_encounter,
            on_write=encounters.check_encounter,
            after_write=[encounters.after_encounter],
            patient_of=_patient("subject"),
            organization_of=keeper_of,
            versioned_updates=True,
        ),
        ResourceDefinition(
            "DiagnosticReport",
            DiagnosticReport,
            [
                patient_ref,
                subject_ref,
                SearchParam("status", "token", "status", "preliminary (draft), final, amended"),
                based_on,
                SearchParam("code", "token", "code", "LOINC 11488-4 consult note"),
                SearchParam("conclusion", "token", "conclusionCode", "A coded conclusion"),
                SearchParam("issued", "date", "issued", "When it was signed"),
                SearchParam(
                    "results-interpreter",
                    "reference",
                    "resultsInterpreter",
                    "The signing specialist",
                    ("Practitioner",),
                ),
                SearchParam("encounter", "reference", "encounter", "The consult", ("Encounter",)),
            ],
            "The consult opinion: drafted preliminary, signed final by the consult's "
            "specialist (a Provenance with the signature; an HTML rendering as "
            "DocumentReference; filed in the Task's output, completing the consult). Signed "
            "never changes: an amendment is a new version, status amended, with its reason "
            "(extension amendment-reason) and the version it replaces.",
            interactions=NO_DELETE,
            prepare=opinion.prepare,
            on_write=opinion.check,
            after_write=[opinion.after],
            patient_of=_patient("subject"),
            organization_of=keeper_of,
            versioned_updates=True,
        ),
    ]


def task_after_write(tele: Teleconsult) -> list[AfterWrite]:
    """What the teleconsult adds to the referral's Task (run after the referral's own hooks):
    a consult request whose Task is cancelled, declined or failed frees its bookings."""
    return [tele.appointments.after_task]
