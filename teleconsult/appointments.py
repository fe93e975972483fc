"""The Appointment's life after booking: hold to booked, reschedule, cancel with a reason,
no-show, arrived and fulfilled from the consult's Encounter; booking opens the consult's
records to the specialist's hospital; a request whose workflow ends frees its bookings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, select

from alliance import clock
from alliance.audit.service import actor_of
from alliance.errors import BadRequest, Conflict, Forbidden, Invalid, NotFound
from alliance.fhir.models import ReferenceIndex, ResourceRow
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.store import Version
from alliance.fhir.values import instant
from alliance.numbers import whole_number
from alliance.records import extension_reference, keeper_of, stamp_keeper
from alliance.security.service import open_grant
from referral.models import Referral
from referral.service import ReferralRules
from teleconsult.booking import BOOKABLE_TASK, CONSULTING_HOSPITAL, HOLD_EXPIRES, Bookings
from teleconsult.common import acting, actor_key, ext, refuse, set_ext
from teleconsult.models import HOLDING, Booking
from teleconsult.notices import record_consult_event
from teleconsult.presentation import LOCAL_TIME, VIRTUAL_SERVICE

#: Appointment states after which nothing changes.
CLOSED = ("fulfilled", "cancelled", "noshow", "entered-in-error")


class AppointmentRules:
    """The Appointment's hooks; new bookings and their time are the Bookings' rules."""

    def __init__(self, booking: Bookings, referral: ReferralRules) -> None:
        self.booking = booking
        self.referral = referral

    def prepare_appointment(
        self, ctx: WriteContext, appt: Resource, previous: Resource | None
    ) -> None:
        """Server-kept fields: who keeps it (the booking hospital), the specialist's hospital,
        the hold's expiry, `created`; the video room and local time are added when served."""
        stamp_keeper(ctx, appt, previous)
        for url in (VIRTUAL_SERVICE, LOCAL_TIME):
            set_ext(appt, url, None)
        for url in (CONSULTING_HOSPITAL, HOLD_EXPIRES):
            kept = ext(previous, url) if previous is not None else None
            set_ext(appt, url, {k: v for k, v in kept.items() if k != "url"} if kept else None)
        appt["created"] = (previous or {}).get("created") or instant(clock.now())

    def check_appointment(
        self, ctx: WriteContext, appt: Resource, previous: Resource | None
    ) -> list[Any]:
        if previous is None:
            self.booking.book_new(ctx, appt)
        else:
            self._change(ctx, appt, previous)
        return []

    def _change(self, ctx: WriteContext, appt: Resource, previous: Resource) -> None:
        """Moves of a booked consult: book a hold, reschedule, cancel with a reason, no-show;
        arrived and fulfilled come from the consult's Encounter (the server)."""
        session, now = ctx.session, clock.now()
        booking = session.get(Booking, appt["id"], with_for_update=True)
        if booking is None:
            raise NotFound(f"Appointment/{appt['id']} is not a teleconsult booking")
        before, after = previous.get("status"), appt.get("status")
        if before in CLOSED:
            refuse(Conflict, "appointment-closed", f"the appointment is {before}; it is closed")
        patient_id, role = self.booking.participants(appt)
        if (
            patient_id != booking.patient_id
            or role != booking.practitioner_role_id
            or appt.get("basedOn") != previous.get("basedOn")
        ):
            refuse(
                Invalid,
                "appointment-parties",
                "the patient, the specialist and the request of a booking do not change; cancel "
                "it and book another",
                "Appointment.participant",
            )
        server = ctx.actor is None
        if server:
            # The server writes participant answers (AppointmentResponse) onto the resource.
            booking.specialist_response = next(
                (
                    str(p.get("status"))
                    for p in appt.get("participant") or []
                    if actor_key(p) == f"PractitionerRole/{booking.practitioner_role_id}"
                ),
                booking.specialist_response,
            )
        if after == "cancelled":
            reason = appt.get("cancelationReason") or {}
            text = reason.get("text") or next(
                (c.get("display") or c.get("code") for c in reason.get("coding") or []), None
            )
            if not text:
                refuse(
                    Invalid,
                    "cancel-reason",
                    "cancelling a consult needs a reason (cancelationReason)",
                    "Appointment.cancelationReason",
                )
            self.booking.release(session, booking)
            booking.status, booking.reason, booking.ended_at = "cancelled", str(text)[:255], now
        elif after == "noshow":
            if before != "booked":
                refuse(Conflict, "noshow", f"a {before} appointment cannot be a no-show")
            if now < booking.starts:
                refuse(
                    Conflict,
                    "noshow-before-start",
                    f"the consult starts at {instant(booking.starts)}; a no-show is recorded "
                    "after the start",
                )
            self.booking.release(session, booking)
            booking.status, booking.ended_at = "noshow", now
        elif before == "pending" and after == "booked":
            if booking.hold_expires is None or booking.hold_expires <= now:
                refuse(
                    Conflict,
                    "hold-expired",
                    f"the hold expired at {instant(booking.hold_expires or now)}; find and hold "
                    "a time again",
                )
            if not server and acting(ctx).hospital_id != booking.requesting_hospital:
                refuse(Forbidden, "booking-hospital", "the hospital that holds it books it")
            sr, row, _patient = self.booking.consult(ctx, appt)
            if row.status not in BOOKABLE_TASK:
                refuse(Conflict, "consult-not-open", f"the consult request is {row.status}")
            self.booking.check_consent(ctx, booking.patient_id, booking.specialist_hospital)
            self._same_time(appt, previous)
            booking.status, booking.hold_expires, booking.booked_at = "booked", None, now
            set_ext(appt, HOLD_EXPIRES, None)
        elif after == before and after in ("pending", "booked"):
            moved = any(appt.get(k) != previous.get(k) for k in ("slot", "start", "end"))
            if moved and after == "pending":
                refuse(Conflict, "hold-moved", "a hold does not move: hold another time")
            if moved:
                sr, row, _patient = self.booking.consult(ctx, appt)
                if row.status not in BOOKABLE_TASK:
                    refuse(Conflict, "consult-not-open", f"the consult request is {row.status}")
                for key in ("start", "end", "minutesDuration"):
                    if appt.get(key) == previous.get(key) and appt.get("slot") != previous.get(
                        "slot"
                    ):
                        appt.pop(key, None)  # follows the new slots
                _, start, end = self.booking.check_time(
                    ctx, appt, sr, row, booking.practitioner_role_id, ignore=booking.appointment_id
                )
                self.booking.release(session, booking)
                booking.starts, booking.ends = start, end
                self.booking.occupy(ctx, booking)
                if ctx.actor is None or ctx.actor.practitioner_id != booking.practitioner_id:
                    booking.specialist_response = "needs-action"
            self.booking.check_participants(ctx, appt)
        elif server and (before, after) in (("booked", "arrived"), ("arrived", "fulfilled")):
            booking.status = str(after)
            if after == "fulfilled":
                # The consult is over: whatever remains of its time is free again.
                self.booking.release(session, booking)
                booking.ended_at = now
        else:
            refuse(
                Conflict,
                "appointment-move",
                f"a teleconsult appointment does not move from {before} to {after} this way; "
                "from booked: reschedule (new slots), cancelled (with a reason), noshow (after "
                "the start); arrived and fulfilled follow the consult's Encounter",
                "Appointment.status",
            )
        self.booking.stamp_participants(ctx, appt, booking, previous)

    @staticmethod
    def _same_time(appt: Resource, previous: Resource) -> None:
        for key in ("slot", "start", "end"):
            if appt.get(key) != previous.get(key):
                refuse(
                    Invalid,
                    "hold-moved",
                    "booking a hold keeps its time; hold another time instead",
                    f"Appointment.{key}",
                )

    def after_appointment(
        self, ctx: WriteContext, version: Version, previous: Resource | None
    ) -> None:
        """Booking opens the consult's shared records (what the request shares, the consents
        naming the specialist's hospital, the patient's demographics) and the Appointment to
        the specialist's hospital, for the request's lifetime (closed with the request)."""
        appt = version.resource()
        became_booked = appt["status"] == "booked" and (previous or {}).get("status") in (
            None,
            "pending",
        )
        if not became_booked:
            return
        booking = ctx.session.get(Booking, version.id)
        assert booking is not None
        row = ctx.session.get(Referral, booking.task_id)
        assert row is not None
        shared = self.referral.shared_records(ctx, row)
        open_grant(
            session=ctx.session,
            patient_id=booking.patient_id,
            hospital_id=booking.specialist_hospital,
            reason=f"ServiceRequest/{booking.service_request_id}",
            resources=[*shared, ("Appointment", version.id)],
            actor=actor_of(ctx.actor),
            shared_by=row.placer_org,
        )
        record_consult_event(
            ctx.session,
            "consult-booked",
            booking,
            ("Appointment", version.id),
            actor=ctx.actor,
        )

    def appointment_writers(self, appt: Resource) -> set[str | None]:
        """Both hospitals of a consult change its Appointment: the one that booked it and the
        specialist's."""
        return {keeper_of(appt), extension_reference(appt, CONSULTING_HOSPITAL, "Organization")}

    def upcoming_condition(self, value: str) -> ColumnElement[bool]:
        """`Appointment?upcoming=24`: held or booked consults starting in the next N hours
        (1 to 168), computed when searched; combine with `actor` or `practitioner`."""
        hours = whole_number(value, 168)
        if hours is None or hours < 1:
            raise BadRequest("upcoming is a number of hours from 1 to 168")
        now = clock.now()
        soon = select(Booking.appointment_id).where(
            Booking.status.in_(("booked", "arrived")),
            Booking.starts >= now,
            Booking.starts < now + timedelta(hours=int(value)),
        )
        return ResourceRow.id.in_(soon)

    def practitioner_condition(self, value: str) -> ColumnElement[bool]:
        """`Appointment?practitioner=Practitioner/x`: the consults x takes part in, named as a
        Practitioner (the booking doctor, an interpreter) or as the specialist through a role."""
        practitioner = value.rsplit("/", 1)[-1]
        named = select(ReferenceIndex.resource_id).where(
            ReferenceIndex.resource_type == "Appointment",
            ReferenceIndex.param == "actor",
            ReferenceIndex.target_type == "Practitioner",
            ReferenceIndex.target_id == practitioner,
        )
        consulting = select(Booking.appointment_id).where(Booking.practitioner_id == practitioner)
        return ResourceRow.id.in_(named.union(consulting))

    def after_task(self, ctx: WriteContext, version: Version, previous: Resource | None) -> None:
        """A consult request that is cancelled, declined or failed frees its live bookings:
        each is cancelled with the request's reason. Other referrals' Tasks are not its own:
        this hook runs after the referral's, on every Task."""
        row = ctx.session.get(Referral, version.id)
        if row is None or row.category != "teleconsult":
            return
        task = version.resource()
        if task.get("status") not in ("cancelled", "rejected", "failed"):
            return
        if (previous or {}).get("status") == task.get("status"):
            return
        live = ctx.session.scalars(
            select(Booking).where(Booking.task_id == version.id, Booking.status.in_(HOLDING))
        ).all()
        why = (task.get("statusReason") or {}).get("text") or f"request {task['status']}"
        for booking in live:
            current = ctx.store.read("Appointment", booking.appointment_id, session=ctx.session)
            body = current.resource()
            body["status"] = "cancelled"
            body["cancelationReason"] = {"text": f"consult request {task['status']}: {why}"}
            ctx.store.update("Appointment", current.id, body, session=ctx.session, actor=None)
