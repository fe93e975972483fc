"""A hospital's working calendar and its specialists' consult schedules.

The hospital's working hours and closures (HealthcareService.availableTime and notAvailable,
FHIR R4 healthcareservice.html, in the hospital's own zone) and each specialist's consult
templates (Schedule, FHIR R4 schedule.html) are kept in typed tables that slot derivation
reads (teleconsult.slots). Every refusal names its rule (teleconsult.common.refuse).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, select

from alliance.codes import ALLIANCE_BASE, RECORD_KEEPER
from alliance.errors import Conflict, Invalid, NotFound
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.values import date_range
from alliance.records import keeper_of, reference_id
from teleconsult.calendar import WEEKDAYS
from teleconsult.common import DEFAULT_ZONE, TELECONSULT_CATEGORY, ext, refuse, set_ext
from teleconsult.models import (
    GRAIN_MINUTES,
    Calendar,
    Closure,
    ConsultSchedule,
    ScheduleTemplate,
    WorkingHours,
)
from teleconsult.slots import hospital_of, role_hospital

#: The hospital's working time zone (IANA), on its teleconsult HealthcareService. FHIR R4's
#: tz-code extension applies to date and time elements only, so the alliance owns this one.
TIME_ZONE_EXTENSION = f"{ALLIANCE_BASE}/StructureDefinition/working-time-zone"
#: A consult template on a Schedule: sub-extensions daysOfWeek (code, repeating),
#: availableStartTime, availableEndTime (time) and slotMinutes (positiveInt), named after
#: HealthcareService.availableTime.
TEMPLATE_EXTENSION = f"{ALLIANCE_BASE}/StructureDefinition/consult-template"
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)
DEFAULT_SLOT_MINUTES = 30


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


class CalendarRules:
    """The hooks of HealthcareService (the hospital's calendar) and Schedule."""

    # ---- the hospital's working calendar (HealthcareService) ---------------------------------

    def prepare_service(self, ctx: WriteContext, hs: Resource, previous: Resource | None) -> None:
        if ext(hs, TIME_ZONE_EXTENSION) is None:
            set_ext(hs, TIME_ZONE_EXTENSION, {"valueCode": DEFAULT_ZONE})
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
        zone_name = ext(hs, TIME_ZONE_EXTENSION).get("valueCode")
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
        set_ext(
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
        for i, template in enumerate(
            e for e in schedule.get("extension") or [] if e.get("url") == TEMPLATE_EXTENSION
        ):
            where = f"Schedule.extension[{TEMPLATE_EXTENSION}][{i}]"
            parts: dict[str, list[Any]] = {}
            for sub in template.get("extension") or []:
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
