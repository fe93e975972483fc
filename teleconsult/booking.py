"""Booking a consult (FHIR R4 appointment.html; IHE ITI-116 Hold and ITI-117 Book).

An Appointment based on the teleconsult request, on free slots of the specialist asked, inside
both sites' working hours, not on a closure, never overlapping another booking of the
specialist or the patient: the checks below name the rule, and the occupancy cells
(teleconsult.models) make the database refuse what a concurrent request slipped past them.
"""

from __future__ import annotations

import itertools
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alliance import clock, metrics
from alliance.codes import ALLIANCE_BASE, LANGUAGE_EXTENSION
from alliance.config import Settings
from alliance.db import named_lock
from alliance.errors import Conflict, Forbidden, Invalid
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.values import instant
from alliance.records import reference_id
from referral.models import Referral
from referral.service import active_consents, category_of
from teleconsult.calendar import Opening, contains
from teleconsult.common import (
    DEFAULT_ZONE,
    actor_key,
    parse_instant,
    read_visible,
    refuse,
    set_ext,
)
from teleconsult.models import GRAIN_MINUTES, HOLDING, Booking, Occupancy
from teleconsult.slots import (
    ScheduleFilter,
    ScheduleView,
    SiteCalendar,
    busy_times,
    load_calendars,
    load_schedules,
    parse_slot_id,
    schedule_slots,
    slot_id,
)

#: The specialist's hospital on an Appointment (who, besides the booking hospital, writes it).
CONSULTING_HOSPITAL = f"{ALLIANCE_BASE}/StructureDefinition/consulting-hospital"
#: When a hold ($hold) frees its time unless booked.
HOLD_EXPIRES = f"{ALLIANCE_BASE}/StructureDefinition/hold-expires"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
#: Task states in which a consult can be booked.
BOOKABLE_TASK = ("requested", "received", "accepted", "in-progress")
#: Languages an interpreter brings (Kazakh, Uyghur), as BCP 47 primary subtags.
INTERPRETER_LANGUAGES = ("kk", "ug")


class Bookings:
    """A consult's booking: its request, its time, its participants and its occupancy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def consult(self, ctx: WriteContext, appt: Resource) -> tuple[Resource, Referral, str]:
        """The teleconsult request an Appointment is based on, its workflow, and the patient."""
        sr_ids = [s for b in appt.get("basedOn") or [] if (s := reference_id(b, "ServiceRequest"))]
        if len(sr_ids) != 1:
            refuse(
                Invalid,
                "consult-request",
                "a teleconsult appointment is basedOn its teleconsult ServiceRequest",
                "Appointment.basedOn",
            )
        sr = read_visible(ctx, "ServiceRequest", sr_ids[0]).resource()
        if category_of(sr) != "teleconsult":
            refuse(
                Invalid,
                "consult-request",
                f"ServiceRequest/{sr['id']} is not a teleconsult request",
                "Appointment.basedOn",
            )
        row = ctx.session.scalar(
            select(Referral)
            .where(Referral.service_request_id == sr["id"])
            .order_by(Referral.created_at.desc())
        )
        if row is None:
            refuse(
                Conflict,
                "consult-not-open",
                f"ServiceRequest/{sr['id']} has no Task yet: send the request first",
            )
        assert row is not None
        patient = reference_id(sr.get("subject"), "Patient")
        assert patient is not None
        return sr, row, patient

    def participants(self, appt: Resource) -> tuple[str | None, str | None]:
        """(patient id, specialist PractitionerRole id) among the participants."""
        patients = [
            p
            for part in appt.get("participant") or []
            if (p := reference_id(part.get("actor"), "Patient"))
        ]
        roles = [
            r
            for part in appt.get("participant") or []
            if (r := reference_id(part.get("actor"), "PractitionerRole"))
        ]
        return (patients[0] if len(patients) == 1 else None), (
            roles[0] if len(roles) == 1 else None
        )

    def book_new(self, ctx: WriteContext, appt: Resource) -> None:
        """A new hold (status pending) or booking (booked) on free slots (IHE ITI-116/117)."""
        session, now = ctx.session, clock.now()
        status = appt.get("status")
        if status not in ("pending", "booked"):
            refuse(
                Invalid,
                "appointment-status",
                "a new teleconsult appointment is pending (a hold) or booked",
                "Appointment.status",
            )
        sr, row, patient = self.consult(ctx, appt)
        if ctx.actor is not None and ctx.actor.hospital_id != row.placer_org:
            refuse(
                Forbidden,
                "booking-hospital",
                "a teleconsult is booked by the hospital that asked for it",
            )
        if row.status not in BOOKABLE_TASK:
            refuse(
                Conflict,
                "consult-not-open",
                f"the consult request is {row.status}; only an open request is booked",
            )
        patient_id, role = self.participants(appt)
        if patient_id != patient:
            refuse(
                Invalid,
                "appointment-patient",
                f"the appointment's patient participant is the request's subject Patient/{patient}",
                "Appointment.participant",
            )
        if role is None:
            refuse(
                Invalid,
                "specialist-participant",
                "name the specialist as one participant's PractitionerRole",
                "Appointment.participant",
            )
        self.check_consent(ctx, patient, row.owner_org)
        self.check_participants(ctx, appt)
        # One live booking per consult: it is rescheduled, not doubled. Bookings of one patient
        # queue on this lock (PostgreSQL), so two first bookings of a consult cannot both pass.
        named_lock(session, f"teleconsult:patient:{patient}")
        live = [
            b
            for b in session.scalars(
                select(Booking).where(
                    Booking.service_request_id == sr["id"], Booking.status.in_(HOLDING)
                )
            )
            if not (b.status == "pending" and (b.hold_expires or now) <= now)
        ]
        if live:
            refuse(
                Conflict,
                "one-booking-per-consult",
                f"the consult already has Appointment/{live[0].appointment_id} "
                f"({live[0].status}); reschedule or cancel that one",
            )
        schedule, start, end = self.check_time(ctx, appt, sr, row, role, ignore=None)
        booking = Booking(
            appointment_id=appt["id"],
            service_request_id=sr["id"],
            task_id=row.task_id,
            schedule_id=schedule.schedule_id,
            practitioner_role_id=role,
            practitioner_id=schedule.practitioner_id,
            specialist_hospital=schedule.hospital_id,
            requesting_hospital=row.placer_org,
            patient_id=patient,
            starts=start,
            ends=end,
            status=status,
            hold_expires=(
                now + timedelta(seconds=self.settings.teleconsult_hold_seconds)
                if status == "pending"
                else None
            ),
            room_id=secrets.token_urlsafe(24),
            specialist_response="needs-action",
            created_at=now,
            booked_at=now if status == "booked" else None,
        )
        session.add(booking)
        self.occupy(ctx, booking)
        set_ext(
            appt,
            CONSULTING_HOSPITAL,
            {"valueReference": {"reference": f"Organization/{schedule.hospital_id}"}},
        )
        if booking.hold_expires is not None:
            set_ext(appt, HOLD_EXPIRES, {"valueInstant": instant(booking.hold_expires)})
        self.stamp_participants(ctx, appt, booking, None)

    def check_time(
        self,
        ctx: WriteContext,
        appt: Resource,
        sr: Resource,
        row: Referral,
        role: str,
        *,
        ignore: str | None,
    ) -> tuple[ScheduleView, datetime, datetime]:
        """The time asked: the slots of the specialist asked, whole and in order, in the
        future, inside both sites' working hours, not on a closure, and free for the
        specialist and the patient. Sets start, end and minutesDuration from the slots."""
        session, now = ctx.session, clock.now()
        slot_ids = [reference_id(s, "Slot") for s in appt.get("slot") or []]
        if not slot_ids or None in slot_ids:
            refuse(
                Invalid,
                "appointment-slots",
                "a teleconsult appointment references the slots it takes (from $find or a "
                "Slot search)",
                "Appointment.slot",
            )
        parsed = [parse_slot_id(s or "") for s in slot_ids]
        if None in parsed:
            refuse(Invalid, "unknown-slot", "a slot id is not one of this server's slots")
        schedule_ids = {p[0] for p in parsed if p}
        schedules = load_schedules(
            session, ScheduleFilter(schedule_ids=tuple(schedule_ids), active_only=False)
        )
        if len(schedules) != len(schedule_ids):
            refuse(Invalid, "unknown-slot", "a slot's schedule is not a consult schedule")
        asked = {r for p in sr.get("performer") or [] if (r := reference_id(p, "PractitionerRole"))}
        if asked and role not in asked:
            refuse(
                Invalid,
                "slot-of-another-specialist",
                f"the request asks for {', '.join(f'PractitionerRole/{a}' for a in sorted(asked))}"
                f", not PractitionerRole/{role}",
                "Appointment.participant",
            )
        for schedule in schedules:
            if schedule.role_id != role:
                refuse(
                    Invalid,
                    "slot-of-another-specialist",
                    f"the slot belongs to Schedule/{schedule.schedule_id} of "
                    f"PractitionerRole/{schedule.role_id}; the specialist asked is "
                    f"PractitionerRole/{role}",
                    "Appointment.slot",
                )
            if schedule.hospital_id != row.owner_org:
                refuse(
                    Invalid,
                    "slot-of-another-specialist",
                    f"the request asks Organization/{row.owner_org}; this slot is at "
                    f"Organization/{schedule.hospital_id}",
                    "Appointment.slot",
                )
        schedule = schedules[0]
        if not schedule.active:
            refuse(Conflict, "schedule-inactive", "the specialist's schedule is not active")
        starts = sorted(p[1] for p in parsed if p)
        first, last = starts[0], starts[-1]
        calendars = load_calendars(session, {schedule.hospital_id, row.placer_org})
        theirs, ours = calendars.get(schedule.hospital_id), calendars.get(row.placer_org)
        day = (first - timedelta(days=1), last + timedelta(days=2))
        offered = {
            s[0][0]: s for s in schedule_slots(schedule, _uncut(theirs), day)
        }  # slots by start, ignoring hours and closures: those have rules of their own
        taken = []
        for at in starts:
            if at not in offered:
                refuse(
                    Invalid,
                    "unknown-slot",
                    f"Schedule/{schedule.schedule_id} has no slot at {instant(at)}",
                    "Appointment.slot",
                )
            taken.append(offered[at])
        start, end = taken[0][0][0], taken[-1][0][1]
        for prev, nxt in itertools.pairwise(taken):
            if prev[0][1] != nxt[0][0] or prev[1] != nxt[1]:
                refuse(
                    Invalid,
                    "appointment-slots",
                    "the slots of one appointment follow each other in one session",
                    "Appointment.slot",
                )
        for key, value in (("start", start), ("end", end)):
            if appt.get(key) is not None and parse_instant(appt[key], f"Appointment.{key}") != (
                value
            ):
                refuse(
                    Invalid,
                    "appointment-slots",
                    f"Appointment.{key} is {instant(value)}, as its slots say",
                    f"Appointment.{key}",
                )
        if start <= now:
            refuse(
                Invalid,
                "booking-in-the-past",
                f"{instant(start)} has passed; book a time in the future",
                "Appointment.start",
            )
        for who, calendar, hospital in (
            ("the specialist's hospital", theirs, schedule.hospital_id),
            ("the requesting hospital", ours, row.placer_org),
        ):
            if calendar is None:
                refuse(
                    Invalid,
                    "outside-working-hours",
                    f"{who} (Organization/{hospital}) keeps no teleconsult calendar",
                )
            assert calendar is not None
            closed = calendar.closure_during(start, end)
            if closed is not None:
                refuse(
                    Invalid,
                    "closure-day",
                    f"{who} (Organization/{hospital}) is closed then: {closed or 'closure'}",
                    "Appointment.start",
                )
            hours = calendar.open_intervals((start - timedelta(days=1), end + timedelta(days=1)))
            if not contains(hours, start, end):
                refuse(
                    Invalid,
                    "outside-working-hours",
                    f"{instant(start)}-{instant(end)} is outside the working hours of {who} "
                    f"(Organization/{hospital}, {calendar.time_zone})",
                    "Appointment.start",
                )
        appt["start"], appt["end"] = instant(start), instant(end)
        appt["minutesDuration"] = int((end - start) / timedelta(minutes=1))
        appt["slot"] = [{"reference": f"Slot/{slot_id(schedule.schedule_id, s)}"} for s in starts]
        self._lock_people(session, schedule.practitioner_id, row.patient_id)
        self._reclaim_expired_holds(ctx, schedule.practitioner_id, row.patient_id, start, end)
        busy = busy_times(
            session,
            practitioner_ids=[schedule.practitioner_id],
            patient_ids=[row.patient_id],
            window=(start, end),
            now=now,
            ignore=ignore,
        )
        if busy.get(("practitioner", schedule.practitioner_id)):
            metrics.BOOKING_CONFLICTS.labels("specialist-double-booked").inc()
            refuse(
                Conflict,
                "specialist-double-booked",
                f"the specialist (Practitioner/{schedule.practitioner_id}) is already booked "
                f"or held between {instant(start)} and {instant(end)}",
                "Appointment.slot",
            )
        if busy.get(("patient", row.patient_id)):
            metrics.BOOKING_CONFLICTS.labels("patient-double-booked").inc()
            refuse(
                Conflict,
                "patient-double-booked",
                f"Patient/{row.patient_id} already has a consult between {instant(start)} and "
                f"{instant(end)}",
                "Appointment.start",
            )
        return schedule, start, end

    @staticmethod
    def _lock_people(session: Session, practitioner_id: str, patient_id: str) -> None:
        """Bookings of one person queue here (PostgreSQL), so the check below sees the other's
        booking and answers with the rule's name; the occupancy key is what guarantees it.
        Always the patient first (the order every caller takes them in: no deadlock)."""
        named_lock(session, f"teleconsult:patient:{patient_id}")
        named_lock(session, f"teleconsult:practitioner:{practitioner_id}")

    def _reclaim_expired_holds(
        self,
        ctx: WriteContext,
        practitioner_id: str,
        patient_id: str,
        start: datetime,
        end: datetime,
    ) -> None:
        """Holds past their expiry that still hold this time are cancelled now, in this
        transaction: expired holds free their slots without a background job."""
        now = clock.now()
        stale = ctx.session.scalars(
            select(Booking).where(
                Booking.status == "pending",
                Booking.hold_expires <= now,
                (Booking.practitioner_id == practitioner_id) | (Booking.patient_id == patient_id),
                Booking.starts < end,
                Booking.ends > start,
            )
        ).all()
        for booking in stale:
            current = ctx.store.read("Appointment", booking.appointment_id, session=ctx.session)
            body = current.resource()
            body["status"] = "cancelled"
            body["cancelationReason"] = {"text": "hold expired"}
            ctx.store.update("Appointment", current.id, body, session=ctx.session, actor=None)

    def occupy(self, ctx: WriteContext, booking: Booking) -> None:
        """Write the booking's cells; the primary key refuses a second booking of the same
        person at the same time, whatever the checks before saw (teleconsult.models)."""
        session = ctx.session
        session.flush()
        for party, who in (
            ("practitioner", booking.practitioner_id),
            ("patient", booking.patient_id),
        ):
            session.add_all(
                Occupancy(party=party, party_id=who, cell=c, appointment_id=booking.appointment_id)
                for c in cells(booking.starts, booking.ends)
            )
            try:
                session.flush()
            except IntegrityError:
                said = f"{party.capitalize()}/{who} was booked at this time by a concurrent request"
                # Each rule named as written, so tests/test_rule_words.py reads it.
                if party == "practitioner":
                    metrics.BOOKING_CONFLICTS.labels("specialist-double-booked").inc()
                    refuse(Conflict, "specialist-double-booked", said)
                metrics.BOOKING_CONFLICTS.labels("patient-double-booked").inc()
                refuse(Conflict, "patient-double-booked", said)

    @staticmethod
    def release(session: Session, booking: Booking) -> None:
        session.execute(delete(Occupancy).where(Occupancy.appointment_id == booking.appointment_id))

    def check_consent(self, ctx: WriteContext, patient: str, hospital: str) -> None:
        if not active_consents(ctx.store, ctx.session, patient, hospital):
            refuse(
                Invalid,
                "consent",
                f"no active consent of Patient/{patient} names Organization/{hospital}, the "
                "specialist's hospital; record the patient's signed consent first",
                "Consent",
            )

    def check_participants(self, ctx: WriteContext, appt: Resource) -> None:
        """An interpreter, if any, brings Kazakh or Uyghur (its language extension)."""
        for i, part in enumerate(appt.get("participant") or []):
            codes = {c.get("code") for t in part.get("type") or [] for c in t.get("coding") or []}
            if "INTERP" not in codes:
                continue
            language = next(
                (
                    e.get("valueCode")
                    for e in part.get("extension") or []
                    if e.get("url") == LANGUAGE_EXTENSION
                ),
                None,
            )
            if not isinstance(language, str) or language.split("-")[0] not in (
                INTERPRETER_LANGUAGES
            ):
                refuse(
                    Invalid,
                    "interpreter-language",
                    "an interpreter participant names the language they bring (extension "
                    f"{LANGUAGE_EXTENSION}): Kazakh (kk) or Uyghur (ug)",
                    f"Appointment.participant[{i}]",
                )

    def stamp_participants(
        self, ctx: WriteContext, appt: Resource, booking: Booking, previous: Resource | None
    ) -> None:
        """Participant types and statuses are the server's: the patient (consented) and the
        booking doctor accept; the specialist answers with an AppointmentResponse; others
        (an interpreter) need to act. A status once answered is kept."""
        before = {actor_key(p): p.get("status") for p in (previous or {}).get("participant") or []}
        doctor = (
            f"Practitioner/{ctx.actor.practitioner_id}"
            if ctx.actor is not None and ctx.actor.practitioner_id
            else None
        )
        parts = list(appt.get("participant") or [])
        if doctor and previous is None and doctor not in {actor_key(p) for p in parts}:
            parts.append({"actor": {"reference": doctor}, "status": "accepted"})
        for part in parts:
            key = actor_key(part)
            if key == f"Patient/{booking.patient_id}":
                part["required"], part["status"] = "required", "accepted"
                continue
            if key == f"PractitionerRole/{booking.practitioner_role_id}":
                part["type"] = [_participation("CON", "consultant")]
                part["required"] = "required"
                part["status"] = booking.specialist_response
                continue
            if previous is None and key == doctor:
                part.setdefault("type", [_participation("REF", "referrer")])
                part["status"] = "accepted"
                continue
            if key in before and ctx.actor is not None:
                part["status"] = before[key]
            elif key not in before:
                part["status"] = "needs-action"
        appt["participant"] = parts


def cells(start: datetime, end: datetime) -> list[datetime]:
    step = timedelta(minutes=GRAIN_MINUTES)
    out, at = [], start
    while at < end:
        out.append(at)
        at += step
    return out


def _uncut(calendar: SiteCalendar | None) -> SiteCalendar:
    """A calendar open all week with no closures in the same zone: to see which slots a
    template makes before the working-hours and closure rules are applied."""
    zone = calendar.time_zone if calendar else DEFAULT_ZONE
    return SiteCalendar("", zone, [Opening(d, 0, 24 * 60) for d in range(1, 8)], [])


def _participation(code: str, display: str) -> Resource:
    return {"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}
