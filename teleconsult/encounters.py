"""The consult itself: an Encounter of class VR (virtual), created in-progress when the
specialist starts it and finished when it ends (FHIR R4 encounter.html); the server keeps its
period, the Appointment (arrived, fulfilled) and the request (in-progress) follow it."""

from __future__ import annotations

from typing import Any

from alliance import clock
from alliance.errors import Conflict, Forbidden, Invalid, NotFound
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.store import Version
from alliance.fhir.values import instant
from alliance.records import keeper_of, reference_id, stamp_keeper
from teleconsult.common import move_task, refuse
from teleconsult.models import Booking
from teleconsult.notices import record_consult_event

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


class EncounterRules:
    """The Encounter's hooks."""

    def prepare_encounter(
        self, ctx: WriteContext, encounter: Resource, previous: Resource | None
    ) -> None:
        """The consult's Encounter is the specialist's hospital's; its period is the server's
        clock; its class is VR (virtual, v3 ActCode)."""
        stamp_keeper(ctx, encounter, previous)
        if not encounter.get("class"):
            encounter["class"] = {"system": ACT_CODE, "code": "VR", "display": "virtual"}
        if previous is not None:
            encounter["period"] = dict(previous.get("period") or {})

    def check_encounter(
        self, ctx: WriteContext, encounter: Resource, previous: Resource | None
    ) -> list[Any]:
        session, now = ctx.session, clock.now()
        cls = encounter.get("class") or {}
        if cls.get("system") != ACT_CODE or cls.get("code") != "VR":
            refuse(
                Invalid,
                "encounter-class",
                f"a teleconsult encounter is virtual: class {ACT_CODE}|VR",
                "Encounter.class",
            )
        appts = [reference_id(a, "Appointment") for a in encounter.get("appointment") or []]
        appts = [a for a in appts if a]
        if len(appts) != 1:
            refuse(
                Invalid,
                "encounter-appointment",
                "the consult's Encounter names its one Appointment",
                "Encounter.appointment",
            )
        booking = session.get(Booking, appts[0], with_for_update=True)
        if booking is None:
            raise NotFound(f"Appointment/{appts[0]} is not a teleconsult booking")
        if keeper_of(encounter) != booking.specialist_hospital:
            refuse(
                Forbidden,
                "consult-host",
                "the specialist's hospital starts and ends the consult",
            )
        status = encounter.get("status")
        if previous is None:
            if status != "in-progress":
                refuse(
                    Invalid,
                    "encounter-start",
                    "starting the consult creates its Encounter in-progress",
                    "Encounter.status",
                )
            if booking.status != "booked":
                refuse(
                    Conflict,
                    "appointment-not-booked",
                    f"the appointment is {booking.status}; a booked consult starts",
                )
            if booking.specialist_response != "accepted":
                refuse(
                    Conflict,
                    "specialist-not-accepted",
                    "the specialist has not accepted the appointment (AppointmentResponse)",
                )
            if booking.encounter_id is not None:
                refuse(
                    Conflict,
                    "one-encounter",
                    f"the consult already has Encounter/{booking.encounter_id}",
                )
            booking.encounter_id = encounter["id"]
            encounter["subject"] = {"reference": f"Patient/{booking.patient_id}"}
            encounter["basedOn"] = [{"reference": f"ServiceRequest/{booking.service_request_id}"}]
            encounter["serviceProvider"] = {
                "reference": f"Organization/{booking.specialist_hospital}"
            }
            specialist = {"reference": f"PractitionerRole/{booking.practitioner_role_id}"}
            encounter.setdefault("participant", [{"individual": specialist}])
            encounter["period"] = {"start": instant(now)}
            return []
        if previous.get("status") == "finished":
            refuse(Conflict, "encounter-closed", "the consult has ended; its Encounter is closed")
        for key in ("subject", "basedOn", "serviceProvider", "appointment"):
            if encounter.get(key) != previous.get(key):
                refuse(Invalid, "encounter-fixed", f"Encounter.{key} does not change")
        if status == "finished":
            encounter["period"] = {**(previous.get("period") or {}), "end": instant(now)}
        elif status != "in-progress":
            refuse(
                Conflict,
                "encounter-move",
                "an in-progress consult moves to finished",
                "Encounter.status",
            )
        return []

    def after_encounter(
        self, ctx: WriteContext, version: Version, previous: Resource | None
    ) -> None:
        """The consult starting marks the Appointment arrived and the request in-progress;
        its end marks the Appointment fulfilled."""
        encounter = version.resource()
        before = (previous or {}).get("status")
        if before == encounter["status"]:
            return
        appt_id = reference_id(encounter["appointment"][0], "Appointment")
        booking = ctx.session.get(Booking, appt_id)
        assert booking is not None and appt_id is not None
        target = "arrived" if previous is None else "fulfilled"
        current = ctx.store.read("Appointment", appt_id, session=ctx.session).resource()
        current["status"] = target
        ctx.store.update("Appointment", appt_id, current, session=ctx.session, actor=None)
        if previous is None:
            move_task(ctx, booking.task_id, "in-progress")
            record_consult_event(
                ctx.session,
                "consult-started",
                booking,
                ("Encounter", version.id),
                actor=ctx.actor,
            )
