"""The rules of a teleconsult, run inside the FHIR writes of its resources.

A teleconsult is a ServiceRequest (category teleconsult) with its Task, exactly as a referral
(referral.service): consent, the workflow, its Provenance and its grants are the referral's.
What this module adds:

- Calendars: a hospital's working hours and closures (HealthcareService.availableTime and
  notAvailable, FHIR R4 healthcareservice.html, in the hospital's own zone) and each
  specialist's consult templates (Schedule, FHIR R4 schedule.html), kept in typed tables that
  slot derivation reads (teleconsult.slots).
- Booking (FHIR R4 appointment.html; IHE ITI-116 Hold and ITI-117 Book): an Appointment
  based on the teleconsult request, on free slots of the specialist asked, inside both sites'
  working hours, not on a closure, never overlapping another booking of the specialist or the
  patient (the database refuses it: teleconsult.models). Booking opens the consult's shared
  records to the specialist's hospital. Reschedule, cancel with a reason, no-show.
- The specialist's AppointmentResponse (accept, or decline with a reason), the video room,
  and the consult's Encounter (class VR) from start to end.

Every refusal names its rule in brackets (`[booking-in-the-past] ...`) and, raised inside the
write's transaction, changes nothing. Functions take the session through the WriteContext and
never commit.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
from datetime import UTC, datetime, time, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alliance.audit.service import Actor
from alliance.codes import (
    ALLIANCE_BASE,
    LANGUAGE_EXTENSION,
    RECORD_KEEPER,
    RECORD_PATIENT,
    REQUEST_CATEGORY,
)
from alliance.config import Settings
from alliance.db import named_lock
from alliance.errors import AllianceError, BadRequest, Conflict, Forbidden, Invalid, NotFound
from alliance.fhir.models import ReferenceIndex, ResourceRow, ResourceVersion
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.store import Version
from alliance.fhir.values import date_range, instant
from alliance.records import extension_reference, keeper_of, reference_id, stamp_keeper
from alliance.security.access import visibility
from alliance.security.service import open_grant
from referral.models import Referral
from referral.service import ReferralRules, active_consents, category_of
from teleconsult.calendar import WEEKDAYS, Opening, contains
from teleconsult.models import (
    GRAIN_MINUTES,
    HOLDING,
    Booking,
    Calendar,
    Closure,
    ConsultSchedule,
    Occupancy,
    ScheduleTemplate,
    WorkingHours,
)
from teleconsult.slots import (
    ScheduleFilter,
    SiteCalendar,
    busy_times,
    hospital_of,
    load_calendars,
    load_schedules,
    parse_slot_id,
    role_hospital,
    schedule_slots,
    slot_id,
)
from teleconsult.time import format_for_site, shows_xinjiang_time

#: The hospital's working time zone (IANA), on its teleconsult HealthcareService. FHIR R4's
#: tz-code extension applies to date and time elements only, so the alliance owns this one.
TIME_ZONE_EXTENSION = f"{ALLIANCE_BASE}/StructureDefinition/working-time-zone"
#: A consult template on a Schedule: sub-extensions daysOfWeek (code, repeating),
#: availableStartTime, availableEndTime (time) and slotMinutes (positiveInt), named after
#: HealthcareService.availableTime.
TEMPLATE_EXTENSION = f"{ALLIANCE_BASE}/StructureDefinition/consult-template"
#: The specialist's hospital on an Appointment (who, besides the booking hospital, writes it).
CONSULTING_HOSPITAL = f"{ALLIANCE_BASE}/StructureDefinition/consulting-hospital"
#: When a hold ($hold) frees its time unless booked.
HOLD_EXPIRES = f"{ALLIANCE_BASE}/StructureDefinition/hold-expires"
#: The appointment's time as the reader's site shows it (teleconsult.time), added when served.
LOCAL_TIME = f"{ALLIANCE_BASE}/StructureDefinition/local-time"
#: R5 Appointment.virtualService as an R4 cross-version extension (xver-r5.r4).
VIRTUAL_SERVICE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService"
VIRTUAL_SERVICE_TYPE = f"{ALLIANCE_BASE}/CodeSystem/virtual-service-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
TELECONSULT_CATEGORY = {"coding": [{"system": REQUEST_CATEGORY, "code": "teleconsult"}]}
DEFAULT_ZONE = "Asia/Shanghai"
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)
DEFAULT_SLOT_MINUTES = 30
#: Task states in which a consult can be booked.
BOOKABLE_TASK = ("requested", "received", "accepted", "in-progress")
#: Appointment states after which nothing changes.
CLOSED = ("fulfilled", "cancelled", "noshow", "entered-in-error")
#: Languages an interpreter brings (Kazakh, Uyghur), as BCP 47 primary subtags.
INTERPRETER_LANGUAGES = ("kk", "ug")


def refuse(
    kind: type[AllianceError], rule: str, message: str, where: str | None = None
) -> NoReturn:
    """Raise `kind` with the rule's name first, so the OperationOutcome says which rule."""
    raise kind(f"[{rule}] {message}", expression=[where] if where else None)


def audit_actor(actor: Any) -> Actor | None:
    if actor is None:
        return None
    return Actor(actor.username, actor.hospital_id, actor.role, actor.practitioner_id, actor.kind)


def _ext(resource: Resource, url: str) -> Any:
    return next((e for e in resource.get("extension") or [] if e.get("url") == url), None)


def _set_ext(resource: Resource, url: str, value: dict[str, Any] | None) -> None:
    others = [e for e in resource.get("extension") or [] if e.get("url") != url]
    resource["extension"] = others + ([{"url": url, **value}] if value else [])
    if not resource["extension"]:
        resource.pop("extension")


def _minutes(value: Any, where: str) -> int:
    """A FHIR time (`HH:MM:SS`) as minutes after midnight, on whole minutes."""
    try:
        parsed = time.fromisoformat(str(value))
    except ValueError:
        refuse(Invalid, "time-of-day", f"{value!r} is not a time of day HH:MM:SS", where)
    if parsed.second or parsed.microsecond:
        refuse(Invalid, "time-of-day", "times of day are on whole minutes", where)
    return parsed.hour * 60 + parsed.minute


def _weekdays(codes: Any, where: str) -> list[int]:
    if not codes:
        refuse(Invalid, "days-of-week", "name the days of the week (mon ... sun)", where)
    days = []
    for code in codes:
        if code not in WEEKDAYS:
            refuse(Invalid, "days-of-week", f"{code!r} is not a day (mon ... sun)", where)
        days.append(WEEKDAYS.index(code) + 1)
    return days


def _zone(name: Any, where: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        refuse(Invalid, "time-zone", f"{name!r} is not an IANA time zone", where)


def local_bound(value: str, zone: ZoneInfo, *, end: bool, where: str) -> datetime:
    """A Period bound: a date is a whole local day in the site's zone (an end date includes its
    day); a dateTime with an offset is that instant."""
    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).date()
            local = datetime.combine(day + timedelta(days=1 if end else 0), time(), tzinfo=zone)
            return local.astimezone(UTC)
        low, high = date_range(value)
    except ValueError:
        refuse(Invalid, "period", f"{value!r} is not a FHIR date or dateTime", where)
    return high if end else low


def cells(start: datetime, end: datetime) -> list[datetime]:
    step = timedelta(minutes=GRAIN_MINUTES)
    out, at = [], start
    while at < end:
        out.append(at)
        at += step
    return out


def _parse_instant(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or "T" not in value:
        refuse(Invalid, "appointment-time", "start and end are instants with an offset", where)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        refuse(Invalid, "appointment-time", f"{value!r} is not an instant", where)


class TeleconsultRules:
    """The teleconsult domain's hooks, bound to the settings and the referral rules."""

    def __init__(self, settings: Settings, referral: ReferralRules) -> None:
        if "{room}" not in settings.teleconsult_room_url:
            raise ValueError("ALLIANCE_TELECONSULT_ROOM_URL must contain {room}")
        self.settings = settings
        self.referral = referral

    # ---- the hospital's working calendar (HealthcareService) ---------------------------------

    def prepare_service(self, ctx: WriteContext, hs: Resource, previous: Resource | None) -> None:
        if _ext(hs, TIME_ZONE_EXTENSION) is None:
            _set_ext(hs, TIME_ZONE_EXTENSION, {"valueCode": DEFAULT_ZONE})
        if not hs.get("category"):
            hs["category"] = [copy.deepcopy(TELECONSULT_CATEGORY)]

    def check_service(
        self, ctx: WriteContext, hs: Resource, previous: Resource | None
    ) -> list[Any]:
        """A hospital's teleconsult calendar: its zone, weekly hours in that zone, holidays
        and closures; one per hospital. Kept in the calendar tables for slot derivation."""
        session = ctx.session
        hospital = reference_id(hs.get("providedBy"), "Organization")
        if hospital is None or hospital_of(session, hospital) != hospital:
            refuse(
                Invalid,
                "calendar-hospital",
                "a teleconsult calendar is provided by a hospital of the alliance (providedBy)",
                "HealthcareService.providedBy",
            )
        assert hospital is not None
        if previous is not None and reference_id(previous.get("providedBy"), "Organization") != (
            hospital
        ):
            refuse(Invalid, "calendar-hospital", "a calendar stays with its hospital")
        zone_name = _ext(hs, TIME_ZONE_EXTENSION).get("valueCode")
        zone = _zone(zone_name, "HealthcareService.extension")
        hours: list[tuple[int, int, int]] = []
        for i, available in enumerate(hs.get("availableTime") or []):
            where = f"HealthcareService.availableTime[{i}]"
            if available.get("allDay"):
                opens, closes = 0, 24 * 60
            else:
                if not available.get("availableStartTime") or not available.get("availableEndTime"):
                    refuse(Invalid, "working-hours", "give start and end times, or allDay", where)
                opens = _minutes(available["availableStartTime"], where)
                closes = _minutes(available["availableEndTime"], where)
                if closes <= opens:
                    refuse(Invalid, "working-hours", "working hours end after they start", where)
            hours += [(d, opens, closes) for d in _weekdays(available.get("daysOfWeek"), where)]
        closures: list[tuple[datetime, datetime, str]] = []
        for i, off in enumerate(hs.get("notAvailable") or []):
            where = f"HealthcareService.notAvailable[{i}].during"
            during = off.get("during") or {}
            if not during.get("start"):
                refuse(Invalid, "closure", "a closure gives the day(s) it covers (during)", where)
            starts = local_bound(during["start"], zone, end=False, where=where)
            # A Period without an end goes on (FHIR R4 datatypes.html#Period): closed until the
            # administrators say otherwise.
            ends = (
                local_bound(during["end"], zone, end=True, where=where)
                if during.get("end")
                else FOREVER
            )
            if ends <= starts:
                refuse(Invalid, "closure", "a closure ends after it starts", where)
            closures.append((starts, ends, str(off.get("description") or "")[:255]))
        existing = session.get(Calendar, hospital)
        if existing is not None and existing.service_id != hs["id"]:
            refuse(
                Conflict,
                "one-calendar",
                f"Organization/{hospital} keeps its teleconsult calendar in "
                f"HealthcareService/{existing.service_id}; change that one",
            )
        session.execute(delete(WorkingHours).where(WorkingHours.hospital_id == hospital))
        session.execute(delete(Closure).where(Closure.hospital_id == hospital))
        if hs.get("active") is False:
            if existing is not None:
                session.delete(existing)
            session.flush()
            return []
        if existing is None:
            session.add(Calendar(hospital_id=hospital, service_id=hs["id"], time_zone=zone.key))
        else:
            existing.time_zone = zone.key
        session.flush()
        session.add_all(
            WorkingHours(hospital_id=hospital, weekday=d, opens=o, closes=c) for d, o, c in hours
        )
        session.add_all(
            Closure(hospital_id=hospital, starts=s, ends=e, reason=why) for s, e, why in closures
        )
        session.flush()
        return []

    # ---- the specialist's consult schedule (Schedule) ----------------------------------------

    def prepare_schedule(
        self, ctx: WriteContext, schedule: Resource, previous: Resource | None
    ) -> None:
        """The Schedule is kept by its specialist's hospital: only that hospital's
        administrators edit it (alliance.security.access.check_write)."""
        role = self._schedule_role(schedule)
        hospital = role_hospital(ctx.session, role) if role else None
        _set_ext(
            schedule,
            RECORD_KEEPER,
            {"valueReference": {"reference": f"Organization/{hospital}"}} if hospital else None,
        )
        if not schedule.get("serviceCategory"):
            schedule["serviceCategory"] = [copy.deepcopy(TELECONSULT_CATEGORY)]
        if role and not schedule.get("specialty"):
            found = ctx.store.read("PractitionerRole", role, session=ctx.session).resource()
            if found.get("specialty"):
                schedule["specialty"] = found["specialty"]

    @staticmethod
    def _schedule_role(schedule: Resource) -> str | None:
        roles = [reference_id(a, "PractitionerRole") for a in schedule.get("actor") or []]
        found = [r for r in roles if r]
        return found[0] if len(found) == 1 else None

    def check_schedule(
        self, ctx: WriteContext, schedule: Resource, previous: Resource | None
    ) -> list[Any]:
        """A consult Schedule: one specialist (PractitionerRole) as its actor, one schedule per
        role, templates that cut whole slots (multiples of 5 minutes) out of a day."""
        session = ctx.session
        role = self._schedule_role(schedule)
        if role is None:
            refuse(
                Invalid,
                "schedule-actor",
                "a consult schedule's actor is one specialist's PractitionerRole",
                "Schedule.actor",
            )
        assert role is not None
        if len(schedule["id"]) > 51:
            refuse(Invalid, "schedule-id", "a schedule's id has at most 51 characters")
        try:
            found = ctx.store.read("PractitionerRole", role, session=session).resource()
        except NotFound:
            refuse(
                Invalid, "schedule-actor", f"PractitionerRole/{role} is not known", "Schedule.actor"
            )
        practitioner = reference_id(found.get("practitioner"), "Practitioner")
        hospital = keeper_of(schedule)
        if practitioner is None or hospital is None:
            refuse(
                Invalid,
                "schedule-actor",
                "the specialist's role names its practitioner and hospital",
                "Schedule.actor",
            )
        assert practitioner is not None and hospital is not None
        templates: list[tuple[int, int, int, int]] = []
        for i, ext in enumerate(
            e for e in schedule.get("extension") or [] if e.get("url") == TEMPLATE_EXTENSION
        ):
            where = f"Schedule.extension[{TEMPLATE_EXTENSION}][{i}]"
            parts: dict[str, list[Any]] = {}
            for sub in ext.get("extension") or []:
                value = next((v for k, v in sub.items() if k.startswith("value")), None)
                parts.setdefault(sub.get("url"), []).append(value)
            days = _weekdays(parts.get("daysOfWeek"), where)
            starts = _minutes((parts.get("availableStartTime") or [None])[0], where)
            ends = _minutes((parts.get("availableEndTime") or [None])[0], where)
            length = (parts.get("slotMinutes") or [DEFAULT_SLOT_MINUTES])[0]
            if not isinstance(length, int) or length <= 0 or length % GRAIN_MINUTES:
                refuse(
                    Invalid,
                    "slot-length",
                    f"slotMinutes is a positive multiple of {GRAIN_MINUTES}",
                    where,
                )
            if starts % GRAIN_MINUTES or ends % GRAIN_MINUTES:
                refuse(
                    Invalid,
                    "template-time",
                    f"consult sessions start and end on multiples of {GRAIN_MINUTES} minutes",
                    where,
                )
            if ends - starts < length:
                refuse(Invalid, "template-time", "a session holds at least one slot", where)
            templates += [(d, starts, ends, length) for d in days]
        horizon = schedule.get("planningHorizon") or {}
        calendar = session.get(Calendar, hospital)
        zone = ZoneInfo(calendar.time_zone if calendar else DEFAULT_ZONE)
        h_start = (
            local_bound(horizon["start"], zone, end=False, where="Schedule.planningHorizon")
            if horizon.get("start")
            else None
        )
        h_end = (
            local_bound(horizon["end"], zone, end=True, where="Schedule.planningHorizon")
            if horizon.get("end")
            else None
        )
        other = session.scalar(
            select(ConsultSchedule.schedule_id).where(
                ConsultSchedule.practitioner_role_id == role,
                ConsultSchedule.schedule_id != schedule["id"],
            )
        )
        if other is not None:
            refuse(
                Conflict,
                "one-schedule",
                f"PractitionerRole/{role} already has its consult schedule Schedule/{other}",
            )
        row = session.get(ConsultSchedule, schedule["id"])
        if row is None:
            row = ConsultSchedule(schedule_id=schedule["id"])
            session.add(row)
        row.practitioner_role_id = role
        row.practitioner_id = practitioner
        row.hospital_id = hospital
        row.active = schedule.get("active", True) is not False
        row.horizon_start, row.horizon_end = h_start, h_end
        session.flush()
        session.execute(
            delete(ScheduleTemplate).where(ScheduleTemplate.schedule_id == schedule["id"])
        )
        session.add_all(
            ScheduleTemplate(
                schedule_id=schedule["id"], weekday=d, starts=s, ends=e, slot_minutes=n
            )
            for d, s, e, n in templates
        )
        session.flush()
        return []

    # ---- the Appointment ---------------------------------------------------------------------

    def prepare_appointment(
        self, ctx: WriteContext, appt: Resource, previous: Resource | None
    ) -> None:
        """Server-kept fields: who keeps it (the booking hospital), the specialist's hospital,
        the hold's expiry, `created`; the video room and local time are added when served."""
        stamp_keeper(ctx, appt, previous)
        for url in (VIRTUAL_SERVICE, LOCAL_TIME):
            _set_ext(appt, url, None)
        for url in (CONSULTING_HOSPITAL, HOLD_EXPIRES):
            kept = _ext(previous, url) if previous is not None else None
            _set_ext(appt, url, {k: v for k, v in kept.items() if k != "url"} if kept else None)
        appt["created"] = (previous or {}).get("created") or instant(datetime.now(UTC))

    def check_appointment(
        self, ctx: WriteContext, appt: Resource, previous: Resource | None
    ) -> list[Any]:
        if previous is None:
            self._book_new(ctx, appt)
        else:
            self._change(ctx, appt, previous)
        return []

    def _visible(self, ctx: WriteContext, rtype: str, rid: str) -> Version:
        visible = visibility(ctx.actor, ctx.store.registry.get) if ctx.actor else None
        return ctx.store.read(rtype, rid, session=ctx.session, visible=visible)

    def _consult(self, ctx: WriteContext, appt: Resource) -> tuple[Resource, Referral, str]:
        """The teleconsult request an Appointment is based on, its workflow, and the patient."""
        sr_ids = [s for b in appt.get("basedOn") or [] if (s := reference_id(b, "ServiceRequest"))]
        if len(sr_ids) != 1:
            refuse(
                Invalid,
                "consult-request",
                "a teleconsult appointment is basedOn its teleconsult ServiceRequest",
                "Appointment.basedOn",
            )
        sr = self._visible(ctx, "ServiceRequest", sr_ids[0]).resource()
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

    def _participants(self, appt: Resource) -> tuple[str | None, str | None]:
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

    def _book_new(self, ctx: WriteContext, appt: Resource) -> None:
        """A new hold (status pending) or booking (booked) on free slots (IHE ITI-116/117)."""
        session, now = ctx.session, datetime.now(UTC)
        status = appt.get("status")
        if status not in ("pending", "booked"):
            refuse(
                Invalid,
                "appointment-status",
                "a new teleconsult appointment is pending (a hold) or booked",
                "Appointment.status",
            )
        sr, row, patient = self._consult(ctx, appt)
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
        patient_id, role = self._participants(appt)
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
        self._check_consent(ctx, patient, row.owner_org)
        self._check_participants(ctx, appt)
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
        schedule, start, end = self._check_time(ctx, appt, sr, row, role, ignore=None)
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
        self._occupy(ctx, booking)
        _set_ext(
            appt,
            CONSULTING_HOSPITAL,
            {"valueReference": {"reference": f"Organization/{schedule.hospital_id}"}},
        )
        if booking.hold_expires is not None:
            _set_ext(appt, HOLD_EXPIRES, {"valueInstant": instant(booking.hold_expires)})
        self._stamp_participants(ctx, appt, booking, None)

    def _check_time(
        self,
        ctx: WriteContext,
        appt: Resource,
        sr: Resource,
        row: Referral,
        role: str,
        *,
        ignore: str | None,
    ) -> tuple[Any, datetime, datetime]:
        """The time asked: the slots of the specialist asked, whole and in order, in the
        future, inside both sites' working hours, not on a closure, and free for the
        specialist and the patient. Sets start, end and minutesDuration from the slots."""
        session, now = ctx.session, datetime.now(UTC)
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
            if appt.get(key) is not None and _parse_instant(appt[key], f"Appointment.{key}") != (
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
            refuse(
                Conflict,
                "specialist-double-booked",
                f"the specialist (Practitioner/{schedule.practitioner_id}) is already booked "
                f"or held between {instant(start)} and {instant(end)}",
                "Appointment.slot",
            )
        if busy.get(("patient", row.patient_id)):
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
        now = datetime.now(UTC)
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

    def _occupy(self, ctx: WriteContext, booking: Booking) -> None:
        """Write the booking's cells; the primary key refuses a second booking of the same
        person at the same time, whatever the checks before saw (teleconsult.models)."""
        session = ctx.session
        session.flush()
        for party, who, rule in (
            ("practitioner", booking.practitioner_id, "specialist-double-booked"),
            ("patient", booking.patient_id, "patient-double-booked"),
        ):
            session.add_all(
                Occupancy(party=party, party_id=who, cell=c, appointment_id=booking.appointment_id)
                for c in cells(booking.starts, booking.ends)
            )
            try:
                session.flush()
            except IntegrityError:
                refuse(
                    Conflict,
                    rule,
                    f"{party.capitalize()}/{who} was booked at this time by a concurrent request",
                )

    @staticmethod
    def _release(session: Session, booking: Booking) -> None:
        session.execute(delete(Occupancy).where(Occupancy.appointment_id == booking.appointment_id))

    def _check_consent(self, ctx: WriteContext, patient: str, hospital: str) -> None:
        if not active_consents(ctx.store, ctx.session, patient, hospital):
            refuse(
                Invalid,
                "consent",
                f"no active consent of Patient/{patient} names Organization/{hospital}, the "
                "specialist's hospital; record the patient's signed consent first",
                "Consent",
            )

    def _check_participants(self, ctx: WriteContext, appt: Resource) -> None:
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

    def _stamp_participants(
        self, ctx: WriteContext, appt: Resource, booking: Booking, previous: Resource | None
    ) -> None:
        """Participant types and statuses are the server's: the patient (consented) and the
        booking doctor accept; the specialist answers with an AppointmentResponse; others
        (an interpreter) need to act. A status once answered is kept."""
        before = {_actor_key(p): p.get("status") for p in (previous or {}).get("participant") or []}
        doctor = (
            f"Practitioner/{ctx.actor.practitioner_id}"
            if ctx.actor is not None and ctx.actor.practitioner_id
            else None
        )
        parts = list(appt.get("participant") or [])
        if doctor and previous is None and doctor not in {_actor_key(p) for p in parts}:
            parts.append({"actor": {"reference": doctor}, "status": "accepted"})
        for part in parts:
            key = _actor_key(part)
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

    def _change(self, ctx: WriteContext, appt: Resource, previous: Resource) -> None:
        """Moves of a booked consult: book a hold, reschedule, cancel with a reason, no-show;
        arrived and fulfilled come from the consult's Encounter (the server)."""
        session, now = ctx.session, datetime.now(UTC)
        booking = session.get(Booking, appt["id"], with_for_update=True)
        if booking is None:
            raise NotFound(f"Appointment/{appt['id']} is not a teleconsult booking")
        before, after = previous.get("status"), appt.get("status")
        if before in CLOSED:
            refuse(Conflict, "appointment-closed", f"the appointment is {before}; it is closed")
        patient_id, role = self._participants(appt)
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
                    if _actor_key(p) == f"PractitionerRole/{booking.practitioner_role_id}"
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
            self._release(session, booking)
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
            self._release(session, booking)
            booking.status, booking.ended_at = "noshow", now
        elif before == "pending" and after == "booked":
            if booking.hold_expires is None or booking.hold_expires <= now:
                refuse(
                    Conflict,
                    "hold-expired",
                    f"the hold expired at {instant(booking.hold_expires or now)}; find and hold "
                    "a time again",
                )
            if not server and ctx.actor.hospital_id != booking.requesting_hospital:
                refuse(Forbidden, "booking-hospital", "the hospital that holds it books it")
            sr, row, _patient = self._consult(ctx, appt)
            if row.status not in BOOKABLE_TASK:
                refuse(Conflict, "consult-not-open", f"the consult request is {row.status}")
            self._check_consent(ctx, booking.patient_id, booking.specialist_hospital)
            self._same_time(appt, previous)
            booking.status, booking.hold_expires, booking.booked_at = "booked", None, now
            _set_ext(appt, HOLD_EXPIRES, None)
        elif after == before and after in ("pending", "booked"):
            moved = any(appt.get(k) != previous.get(k) for k in ("slot", "start", "end"))
            if moved and after == "pending":
                refuse(Conflict, "hold-moved", "a hold does not move: hold another time")
            if moved:
                sr, row, _patient = self._consult(ctx, appt)
                if row.status not in BOOKABLE_TASK:
                    refuse(Conflict, "consult-not-open", f"the consult request is {row.status}")
                for key in ("start", "end", "minutesDuration"):
                    if appt.get(key) == previous.get(key) and appt.get("slot") != previous.get(
                        "slot"
                    ):
                        appt.pop(key, None)  # follows the new slots
                _, start, end = self._check_time(
                    ctx, appt, sr, row, booking.practitioner_role_id, ignore=booking.appointment_id
                )
                self._release(session, booking)
                booking.starts, booking.ends = start, end
                self._occupy(ctx, booking)
                if ctx.actor is None or ctx.actor.practitioner_id != booking.practitioner_id:
                    booking.specialist_response = "needs-action"
            self._check_participants(ctx, appt)
        elif server and (before, after) in (("booked", "arrived"), ("arrived", "fulfilled")):
            booking.status = str(after)
            if after == "fulfilled":
                # The consult is over: whatever remains of its time is free again.
                self._release(session, booking)
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
        self._stamp_participants(ctx, appt, booking, previous)

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
            actor=audit_actor(ctx.actor),
            shared_by=row.placer_org,
        )

    def appointment_writers(self, appt: Resource) -> set[str | None]:
        """Both hospitals of a consult change its Appointment: the one that booked it and the
        specialist's."""
        return {keeper_of(appt), extension_reference(appt, CONSULTING_HOSPITAL, "Organization")}

    def present_appointments(self, session: Session, reader: Any, versions: list[Version]) -> None:
        """For this reader: the appointment's time as their site shows it (Beijing time, with
        Xinjiang time beside it at a Xinjiang site), and the video room, to participants only,
        while the consult is booked or under way."""
        live = [v for v in versions if v.content is not None]
        if not live:
            return
        bookings = {
            b.appointment_id: b
            for b in session.scalars(
                select(Booking).where(Booking.appointment_id.in_([v.id for v in live]))
            )
        }
        xinjiang = reader_in_xinjiang(session, reader.hospital_id)
        for v in live:
            appt = v.resource()
            booking = bookings.get(v.id)
            if appt.get("start"):
                shown = format_for_site(
                    _parse_instant(appt["start"], "Appointment.start"), xinjiang=xinjiang
                )
                _set_ext(appt, LOCAL_TIME, {"valueString": shown})
            running = booking is not None and booking.status in ("booked", "arrived")
            if running and booking is not None and is_participant(reader, appt, booking):
                _set_ext(appt, VIRTUAL_SERVICE, self.virtual_service(booking))
            v.content = _dumps(appt)

    def virtual_service(self, booking: Booking) -> dict[str, Any]:
        """R5 VirtualServiceDetail as the R4 cross-version extension's sub-extensions."""
        link = self.settings.teleconsult_room_url.replace("{room}", booking.room_id)
        return {
            "extension": [
                {
                    "url": "channelType",
                    "valueCoding": {
                        "system": VIRTUAL_SERVICE_TYPE,
                        "code": self.settings.teleconsult_room_channel,
                    },
                },
                {"url": "address", "valueUrl": link},
                {"url": "sessionKey", "valueString": booking.room_id},
            ]
        }

    def upcoming_condition(self, value: str) -> ColumnElement[bool]:
        """`Appointment?upcoming=24`: held or booked consults starting in the next N hours
        (1 to 168), computed when searched; combine with `actor` or `practitioner`."""
        if not value.isdigit() or not 1 <= int(value) <= 168:
            raise BadRequest("upcoming is a number of hours from 1 to 168")
        now = datetime.now(UTC)
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

    # ---- the specialist's answer (AppointmentResponse) -----------------------------------

    def prepare_response(
        self, ctx: WriteContext, response: Resource, previous: Resource | None
    ) -> None:
        """Kept by the responder's hospital; in the compartment of the appointment's patient."""
        stamp_keeper(ctx, response, previous)
        appt_id = reference_id(response.get("appointment"), "Appointment")
        booking = ctx.session.get(Booking, appt_id) if appt_id else None
        if booking is not None:
            try:  # only what the responder can see names a patient (else 404 later)
                self._visible(ctx, "Appointment", booking.appointment_id)
            except NotFound:
                booking = None
        _set_ext(
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
        appt = self._visible(ctx, "Appointment", appt_id).resource()
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
        who = _actor_key({"actor": response.get("actor") or {}})
        if who not in {_actor_key(p) for p in appt.get("participant") or []}:
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
        who = _actor_key({"actor": response.get("actor") or {}})
        specialist = who in (
            f"PractitionerRole/{booking.practitioner_role_id}",
            f"Practitioner/{booking.practitioner_id}",
        )
        answer = response["participantStatus"]
        current = ctx.store.read("Appointment", appt_id, session=ctx.session)
        appt = current.resource()
        for part in appt.get("participant") or []:
            key = _actor_key(part)
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
            self.move_task(ctx, booking.task_id, "accepted")

    def move_task(self, ctx: WriteContext, task_id: str, target: str) -> None:
        """Move the consult's Task to `target` through the referral workflow, as the acting
        user (the specialist's hospital is its owner), each step with its Provenance."""
        path = {
            "accepted": {"requested": ["received", "accepted"], "received": ["accepted"]},
            "in-progress": {
                "requested": ["received", "accepted", "in-progress"],
                "received": ["accepted", "in-progress"],
                "accepted": ["in-progress"],
            },
        }[target]
        row = ctx.session.get(Referral, task_id)
        assert row is not None
        for status in path.get(row.status, []):
            body = ctx.store.read("Task", task_id, session=ctx.session).resource()
            body["status"] = status
            ctx.store.update("Task", task_id, body, session=ctx.session, actor=ctx.actor)

    # ---- the consult (Encounter, class VR) -------------------------------------------------

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
        session, now = ctx.session, datetime.now(UTC)
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
            self.move_task(ctx, booking.task_id, "in-progress")

    # ---- requests whose workflow ends ---------------------------------------------------------

    def after_task(self, ctx: WriteContext, version: Version, previous: Resource | None) -> None:
        """A consult request that is cancelled, declined or failed frees its live bookings:
        each is cancelled with the request's reason."""
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


# ---- helpers ----------------------------------------------------------------------------------


def _uncut(calendar: SiteCalendar | None) -> SiteCalendar:
    """A calendar open all week with no closures in the same zone: to see which slots a
    template makes before the working-hours and closure rules are applied."""
    zone = calendar.time_zone if calendar else DEFAULT_ZONE
    return SiteCalendar("", zone, [Opening(d, 0, 24 * 60) for d in range(1, 8)], [])


def _actor_key(part: Resource) -> str | None:
    ref = (part.get("actor") or {}).get("reference")
    return ref if isinstance(ref, str) else None


def _required(appt: Resource, who: str | None) -> bool:
    return any(
        _actor_key(p) == who and p.get("required", "required") == "required"
        for p in appt.get("participant") or []
    )


def _participation(code: str, display: str) -> Resource:
    return {"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}


def is_participant(reader: Any, appt: Resource, booking: Booking) -> bool:
    """Whether the reader takes part: the specialist (by practitioner, whatever role), or a
    practitioner named among the participants (the booking doctor, an interpreter)."""
    own = getattr(reader, "practitioner_id", None)
    if not own:
        return False
    if own == booking.practitioner_id:
        return True
    return f"Practitioner/{own}" in {_actor_key(p) for p in appt.get("participant") or []}


def reader_in_xinjiang(session: Session, hospital_id: str) -> bool:
    """Whether users of this hospital are shown Xinjiang time (teleconsult.time)."""
    row = session.get(ResourceRow, ("Organization", hospital_id))
    org: dict[str, Any] | None = None
    if row is not None and not row.deleted:
        found = session.get(ResourceVersion, ("Organization", hospital_id, row.version))
        if found is not None and found.content:
            org = json.loads(found.content)
    calendar = session.get(Calendar, hospital_id)
    return shows_xinjiang_time(org, calendar.time_zone if calendar else None)


def _dumps(resource: Resource) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
