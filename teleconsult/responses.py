"""A participant's answer to a consult appointment (FHIR R4 appointmentresponse.html):
accepted, tentative, or declined with a reason. The answer is copied onto the Appointment; the
specialist declining cancels it, the specialist accepting accepts the consult request."""

from __future__ import annotations

from typing import Any

from alliance.codes import RECORD_PATIENT
from alliance.errors import Conflict, Forbidden, Invalid, NotFound
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.store import Version
from alliance.records import reference_id, stamp_keeper
from teleconsult.common import actor_key, move_task, read_visible, refuse, set_ext
from teleconsult.models import Booking


class ResponseRules:
    """The AppointmentResponse's hooks."""

    def prepare_response(
        self, ctx: WriteContext, response: Resource, previous: Resource | None
    ) -> None:
        """Kept by the responder's hospital; in the compartment of the appointment's patient."""
        stamp_keeper(ctx, response, previous)
        appt_id = reference_id(response.get("appointment"), "Appointment")
        booking = ctx.session.get(Booking, appt_id) if appt_id else None
        if booking is not None:
            try:  # only what the responder can see names a patient (else 404 later)
                read_visible(ctx, "Appointment", booking.appointment_id)
            except NotFound:
                booking = None
        set_ext(
            response,
            RECORD_PATIENT,
            {"valueReference": {"reference": f"Patient/{booking.patient_id}"}} if booking else None,
        )

    def check_response(
        self, ctx: WriteContext, response: Resource, previous: Resource | None
    ) -> list[Any]:
        """A participant answers for themselves: accepted, tentative, or declined with a
        reason (comment). The answer is copied onto the Appointment; the specialist declining
        cancels it (its time is freed), the specialist accepting accepts the consult request."""
        appt_id = reference_id(response.get("appointment"), "Appointment")
        if appt_id is None:
            refuse(
                Invalid,
                "response-appointment",
                "an AppointmentResponse names its Appointment",
                "AppointmentResponse.appointment",
            )
        assert appt_id is not None
        appt = read_visible(ctx, "Appointment", appt_id).resource()
        booking = ctx.session.get(Booking, appt_id, with_for_update=True)
        if booking is None:
            raise NotFound(f"Appointment/{appt_id} is not a teleconsult booking")
        if booking.status != "booked":
            refuse(
                Conflict,
                "appointment-not-booked",
                f"the appointment is {booking.status}; only a booked one is answered",
            )
        answer = response.get("participantStatus")
        if answer not in ("accepted", "declined", "tentative"):
            refuse(
                Invalid,
                "response-status",
                "participantStatus is accepted, declined or tentative",
                "AppointmentResponse.participantStatus",
            )
        if answer == "declined" and not (response.get("comment") or "").strip():
            refuse(
                Invalid,
                "decline-reason",
                "declining needs a reason (comment)",
                "AppointmentResponse.comment",
            )
        who = actor_key({"actor": response.get("actor") or {}})
        if who not in {actor_key(p) for p in appt.get("participant") or []}:
            refuse(
                Invalid,
                "response-actor",
                "the responder is a participant of the appointment",
                "AppointmentResponse.actor",
            )
        if ctx.actor is not None:
            own = ctx.actor.practitioner_id
            as_specialist = who == f"PractitionerRole/{booking.practitioner_role_id}"
            speaks_for = own and (
                who == f"Practitioner/{own}" or (as_specialist and booking.practitioner_id == own)
            )
            if not speaks_for:
                refuse(
                    Forbidden,
                    "respond-for-yourself",
                    "participants answer for themselves only",
                    "AppointmentResponse.actor",
                )
        return []

    def after_response(
        self, ctx: WriteContext, version: Version, previous: Resource | None
    ) -> None:
        response = version.resource()
        appt_id = reference_id(response.get("appointment"), "Appointment")
        booking = ctx.session.get(Booking, appt_id)
        assert booking is not None and appt_id is not None
        who = actor_key({"actor": response.get("actor") or {}})
        specialist = who in (
            f"PractitionerRole/{booking.practitioner_role_id}",
            f"Practitioner/{booking.practitioner_id}",
        )
        answer = response["participantStatus"]
        current = ctx.store.read("Appointment", appt_id, session=ctx.session)
        appt = current.resource()
        for part in appt.get("participant") or []:
            key = actor_key(part)
            if key == who or (
                specialist and key == f"PractitionerRole/{booking.practitioner_role_id}"
            ):
                part["status"] = answer
        if answer == "declined" and (specialist or _required(appt, who)):
            appt["status"] = "cancelled"
            appt["cancelationReason"] = {
                "text": f"declined by {who}: {response.get('comment', '').strip()}"
            }
        ctx.store.update("Appointment", appt_id, appt, session=ctx.session, actor=None)
        if specialist and answer == "accepted":
            move_task(ctx, booking.task_id, "accepted")


def _required(appt: Resource, who: str | None) -> bool:
    return any(
        actor_key(p) == who and p.get("required", "required") == "required"
        for p in appt.get("participant") or []
    )
