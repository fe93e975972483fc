"""Availability, read from the calendar tables: which slots a specialist's Schedule offers, which
are free, and which times suit both sites (IHE ITI-115 Find Potential Appointments).

Slots are derived, not stored (FHIR R4 slot.html allows either): a Schedule's templates, on the
days of its planning horizon, within its hospital's working hours, less the hospital's
closures. A slot is `busy` while a booking holds its time, `busy-tentative` while a hold that
has not expired does, `free` otherwise. Its id names its schedule and its start in UTC
(`{schedule}.{YYYYMMDDHHMM}`), so a slot can be read, searched and booked without a row.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, false, or_, select, true
from sqlalchemy.orm import Session

from alliance.codes import PROFESSIONAL_TITLE, TITLE_RANK
from alliance.errors import BadRequest
from alliance.fhir.models import ReferenceIndex, ResourceRow, TokenIndex
from teleconsult.calendar import (
    Interval,
    Opening,
    Template,
    contains,
    intersect,
    merge,
    open_intervals,
    overlaps,
    sessions,
)
from teleconsult.models import (
    HOLDING,
    Booking,
    Calendar,
    Closure,
    ConsultSchedule,
    ScheduleTemplate,
    WorkingHours,
)

#: A coding as indexed: (system or None, code).
Coding = tuple[str | None, str]
_SLOT_ID = re.compile(r"^(?P<schedule>[A-Za-z0-9\-.]{1,51})\.(?P<at>\d{12})$")


@dataclass
class SiteCalendar:
    """A hospital's working calendar: weekly hours in its zone, and its closures."""

    hospital_id: str
    time_zone: str
    openings: list[Opening]
    closures: list[tuple[datetime, datetime, str]]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def open_intervals(self, window: Interval, *, less_closures: bool = True) -> list[Interval]:
        closed = [(s, e) for s, e, _ in self.closures] if less_closures else []
        return open_intervals(self.openings, self.zone, closed, window)

    def closure_during(self, start: datetime, end: datetime) -> str | None:
        """The reason of a closure sharing an instant with [start, end), if any."""
        return next((why for s, e, why in self.closures if s < end and start < e), None)


@dataclass
class ScheduleView:
    schedule_id: str
    role_id: str
    practitioner_id: str
    hospital_id: str
    active: bool
    horizon: tuple[datetime | None, datetime | None]
    templates: list[Template] = field(default_factory=list)

    def within_horizon(self, window: Interval) -> Interval | None:
        start = max(window[0], self.horizon[0]) if self.horizon[0] else window[0]
        end = min(window[1], self.horizon[1]) if self.horizon[1] else window[1]
        return (start, end) if start < end else None


@dataclass
class SlotView:
    schedule: ScheduleView
    start: datetime
    end: datetime
    status: str

    @property
    def id(self) -> str:
        return slot_id(self.schedule.schedule_id, self.start)


@dataclass
class Proposal:
    """A time that suits the specialist and both sites: the slots it takes, in order."""

    schedule: ScheduleView
    start: datetime
    end: datetime
    slots: list[Interval]


def slot_id(schedule_id: str, start: datetime) -> str:
    return f"{schedule_id}.{start.astimezone(UTC):%Y%m%d%H%M}"


def parse_slot_id(value: str) -> tuple[str, datetime] | None:
    m = _SLOT_ID.match(value)
    if not m:
        return None
    try:
        at = datetime.strptime(m["at"], "%Y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        return None
    return m["schedule"], at


# ---- loading ------------------------------------------------------------------------------


def load_calendars(session: Session, hospital_ids: Iterable[str]) -> dict[str, SiteCalendar]:
    wanted = sorted(set(hospital_ids))
    if not wanted:
        return {}
    found = {
        c.hospital_id: SiteCalendar(c.hospital_id, c.time_zone, [], [])
        for c in session.scalars(select(Calendar).where(Calendar.hospital_id.in_(wanted)))
    }
    for h in session.scalars(select(WorkingHours).where(WorkingHours.hospital_id.in_(list(found)))):
        found[h.hospital_id].openings.append(Opening(h.weekday, h.opens, h.closes))
    for c in session.scalars(select(Closure).where(Closure.hospital_id.in_(list(found)))):
        found[c.hospital_id].closures.append((c.starts, c.ends, c.reason))
    return found


@dataclass(frozen=True)
class ScheduleFilter:
    """Which consult schedules: by id, role, practitioner, hospital, specialty (tokens of the
    role's specialty, `code` or `system|code`) and professional title at least."""

    schedule_ids: tuple[str, ...] = ()
    role_ids: tuple[str, ...] = ()
    practitioner_ids: tuple[str, ...] = ()
    hospital_ids: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()
    #: Further specialty alternatives, each group of which must hold too (a search
    #: parameter repeated: every one holds).
    specialty_groups: tuple[tuple[str, ...], ...] = ()
    min_title: str | None = None
    active_only: bool = True


def load_schedules(session: Session, flt: ScheduleFilter) -> list[ScheduleView]:
    query = select(ConsultSchedule)
    if flt.active_only:
        query = query.where(ConsultSchedule.active.is_(True))
    if flt.schedule_ids:
        query = query.where(ConsultSchedule.schedule_id.in_(flt.schedule_ids))
    if flt.role_ids:
        query = query.where(ConsultSchedule.practitioner_role_id.in_(flt.role_ids))
    if flt.practitioner_ids:
        query = query.where(ConsultSchedule.practitioner_id.in_(flt.practitioner_ids))
    if flt.hospital_ids:
        query = query.where(ConsultSchedule.hospital_id.in_(flt.hospital_ids))
    groups = ((flt.specialties,) if flt.specialties else ()) + flt.specialty_groups
    for group in groups:
        query = query.where(ConsultSchedule.practitioner_role_id.in_(_roles_with(group)))
    rows = list(session.scalars(query.order_by(ConsultSchedule.schedule_id)))
    if flt.min_title is not None:
        ranks = practitioner_ranks(session, [r.practitioner_id for r in rows])
        floor = TITLE_RANK[flt.min_title]
        rows = [r for r in rows if ranks.get(r.practitioner_id, 0) >= floor]
    views = {
        r.schedule_id: ScheduleView(
            r.schedule_id,
            r.practitioner_role_id,
            r.practitioner_id,
            r.hospital_id,
            r.active,
            (r.horizon_start, r.horizon_end),
        )
        for r in rows
    }
    if views:
        for t in session.scalars(
            select(ScheduleTemplate).where(ScheduleTemplate.schedule_id.in_(list(views)))
        ):
            views[t.schedule_id].templates.append(
                Template(t.weekday, t.starts, t.ends, t.slot_minutes)
            )
    return list(views.values())


def _roles_with(specialties: tuple[str, ...]) -> Any:
    """The PractitionerRoles with one of the specialties (`code`, `system|code`, or
    `system|`: any code of the system)."""
    tokens = []
    for token in specialties:
        system, sep, code = token.rpartition("|")
        conds = [TokenIndex.code == code] if code or not sep else []
        if sep and system:
            conds.append(TokenIndex.system == system)
        tokens.append(and_(true(), *conds))
    return select(TokenIndex.resource_id).where(
        TokenIndex.resource_type == "PractitionerRole",
        TokenIndex.param == "specialty",
        or_(false(), *tokens),
    )


def practitioner_ranks(session: Session, practitioner_ids: list[str]) -> dict[str, int]:
    """The seniority (alliance.codes.TITLE_RANK) of each practitioner's highest title."""
    ranks: dict[str, int] = {}
    if not practitioner_ids:
        return ranks
    for pid, code in session.execute(
        select(TokenIndex.resource_id, TokenIndex.code).where(
            TokenIndex.resource_type == "Practitioner",
            TokenIndex.param == "qualification",
            TokenIndex.system == PROFESSIONAL_TITLE,
            TokenIndex.resource_id.in_(sorted(set(practitioner_ids))),
        )
    ):
        ranks[pid] = max(ranks.get(pid, 0), TITLE_RANK.get(code, 0))
    return ranks


def role_hospital(session: Session, role_id: str) -> str | None:
    """The hospital of a PractitionerRole (its organization, or the hospital of its
    department)."""
    org = session.scalar(
        select(ReferenceIndex.target_id).where(
            ReferenceIndex.resource_type == "PractitionerRole",
            ReferenceIndex.resource_id == role_id,
            ReferenceIndex.param == "organization",
        )
    )
    if org is None:
        return None
    return hospital_of(session, org)


def hospital_of(session: Session, organization_id: str) -> str | None:
    """The hospital an Organization is, or is a department of."""
    row = session.get(ResourceRow, ("Organization", organization_id))
    if row is None or row.deleted:
        return None
    return row.organization_id or organization_id


@dataclass
class Busy:
    """A person's held time: bookings (busy) and live holds (tentative), merged."""

    booked: list[Interval] = field(default_factory=list)
    held: list[Interval] = field(default_factory=list)

    def all(self) -> list[Interval]:
        return merge([*self.booked, *self.held])


def busy_times(
    session: Session,
    *,
    practitioner_ids: Iterable[str] = (),
    patient_ids: Iterable[str] = (),
    window: Interval,
    now: datetime,
    ignore: str | None = None,
) -> dict[tuple[str, str], Busy]:
    """Held time per ("practitioner", id) and ("patient", id) within `window`; a hold that has
    expired holds nothing; `ignore` is an appointment not to count (the one being moved)."""
    practitioners, patients = sorted(set(practitioner_ids)), sorted(set(patient_ids))
    people = []
    if practitioners:
        people.append(Booking.practitioner_id.in_(practitioners))
    if patients:
        people.append(Booking.patient_id.in_(patients))
    found: dict[tuple[str, str], Busy] = {}
    if not people:
        return found
    # Columns, not entities: availability reads many bookings and needs five fields of each.
    query = select(
        Booking.practitioner_id,
        Booking.patient_id,
        Booking.status,
        Booking.hold_expires,
        Booking.starts,
        Booking.ends,
    ).where(
        or_(*people),
        Booking.status.in_(HOLDING),
        Booking.starts < window[1],
        Booking.ends > window[0],
    )
    if ignore is not None:
        query = query.where(Booking.appointment_id != ignore)
    wanted = {("practitioner", p) for p in practitioners} | {("patient", p) for p in patients}
    for practitioner, patient, status, expires, starts, ends in session.execute(query):
        if status == "pending" and (expires is None or expires <= now):
            continue
        for key in (("practitioner", practitioner), ("patient", patient)):
            if key not in wanted:
                continue
            entry = found.setdefault(key, Busy())
            (entry.held if status == "pending" else entry.booked).append((starts, ends))
    for entry in found.values():
        entry.booked, entry.held = merge(entry.booked), merge(entry.held)
    return found


# ---- slots --------------------------------------------------------------------------------


def schedule_slots(
    schedule: ScheduleView, calendar: SiteCalendar | None, window: Interval
) -> list[tuple[Interval, Interval]]:
    """Every slot the schedule offers in `window`, each with its session (the template
    occurrence it belongs to): within the horizon and the hospital's hours, not on a closure.
    A hospital with no working calendar offers none."""
    if calendar is None:
        return []
    opened = calendar.open_intervals((window[0] - timedelta(days=1), window[1] + timedelta(days=1)))
    return list(_slots(schedule, calendar.zone, opened, window))


def _slots(
    schedule: ScheduleView, zone: ZoneInfo, opened: list[Interval], window: Interval
) -> Iterator[tuple[Interval, Interval]]:
    """The slots of `schedule` in `window` inside `opened`, in time order, lazily."""
    span = schedule.within_horizon(window)
    if span is None:
        return
    for occurrence in sessions(schedule.templates, zone, span):
        for start in occurrence.slot_starts():
            end = start + occurrence.slot
            if start >= span[0] and end <= span[1] and contains(opened, start, end):
                yield (start, end), (occurrence.starts, occurrence.ends)


def list_slots(
    session: Session,
    schedules: list[ScheduleView],
    window: Interval,
    *,
    now: datetime,
    statuses: set[str] | None = None,
) -> list[SlotView]:
    """The slots of `schedules` in `window` with their status, by start then schedule."""
    calendars = load_calendars(session, {s.hospital_id for s in schedules})
    busy = busy_times(
        session, practitioner_ids=[s.practitioner_id for s in schedules], window=window, now=now
    )
    wide = (window[0] - timedelta(days=1), window[1] + timedelta(days=1))
    opened = {h: c.open_intervals(wide) for h, c in calendars.items()}
    out: list[SlotView] = []
    for schedule in schedules:
        calendar = calendars.get(schedule.hospital_id)
        if calendar is None:
            continue
        held = busy.get(("practitioner", schedule.practitioner_id), Busy())
        for (start, end), _session in _slots(
            schedule, calendar.zone, opened[schedule.hospital_id], window
        ):
            if overlaps(held.booked, start, end):
                status = "busy"
            elif overlaps(held.held, start, end):
                status = "busy-tentative"
            else:
                status = "free"
            if statuses is None or status in statuses:
                out.append(SlotView(schedule, start, end, status))
    out.sort(key=lambda v: (v.start, v.schedule.schedule_id))
    return out


def slot_by_id(session: Session, value: str, *, now: datetime) -> SlotView | None:
    parsed = parse_slot_id(value)
    if parsed is None:
        return None
    schedule_id, start = parsed
    found = load_schedules(session, ScheduleFilter(schedule_ids=(schedule_id,), active_only=False))
    if not found:
        return None
    window = (start, start + timedelta(days=1))
    for view in list_slots(session, found, window, now=now):
        if view.start == start:
            return view
    return None


@dataclass(frozen=True)
class SlotQuery:
    """A Slot search, its values read by the FHIR face. In each tuple of alternatives one
    must match, and every group must (a search parameter repeated: each holds). `start` and
    `end` bound where the starts asked for lie, `[start, end]` (end None: two weeks on); the
    face keeps, of what is found there, what its date prefixes match. None (schedule ids,
    statuses, slot ids): any. `updated`: whether the slots (as of now) meet `_lastUpdated`."""

    start: datetime
    end: datetime | None = None
    schedule_ids: frozenset[str] | None = None
    organization_ids: tuple[tuple[str, ...], ...] = ()
    specialties: tuple[tuple[str, ...], ...] = ()
    statuses: frozenset[str] | None = None
    ids: frozenset[str] | None = None
    updated: bool = True


def search_slots(
    session: Session, query: SlotQuery, *, now: datetime, max_days: int
) -> list[SlotView]:
    """The slots a search finds, by start then schedule: never in the past, at most
    `max_days` ahead (a wider search must be narrowed: BadRequest)."""
    hi = query.end or query.start + timedelta(days=14)
    lo = max(query.start, now)
    if hi - lo > timedelta(days=max_days):
        raise BadRequest(f"Slot searches look at most {max_days} days ahead; narrow start")
    if not query.updated or hi < lo or query.schedule_ids == frozenset():
        return []
    hospitals: set[str] | None = None
    for group in query.organization_ids:
        named = {h for o in group if (h := hospital_of(session, o)) is not None}
        hospitals = named if hospitals is None else hospitals & named
    if hospitals is not None and not hospitals:
        return []
    found = load_schedules(
        session,
        ScheduleFilter(
            schedule_ids=tuple(sorted(query.schedule_ids or ())),
            hospital_ids=tuple(sorted(hospitals or ())),
            specialty_groups=query.specialties,
        ),
    )
    statuses = set(query.statuses) if query.statuses is not None else None
    if query.ids is not None:
        by_id = [v for i in sorted(query.ids) if (v := slot_by_id(session, i, now=now))]
        wanted = {f.schedule_id for f in found}
        views = [
            v
            for v in by_id
            if v.schedule.schedule_id in wanted
            and (statuses is None or v.status in statuses)
            and lo <= v.start <= hi
        ]
        views.sort(key=lambda v: (v.start, v.schedule.schedule_id))
        return views
    # A slot that starts by `hi` may end after it: generate as far as the longest slot reaches.
    longest = max((t.slot_minutes for s in found for t in s.templates), default=0)
    window = (lo, hi + timedelta(minutes=longest))
    views = list_slots(session, found, window, now=now, statuses=statuses)
    return [v for v in views if v.start <= hi]


def role_specialties(session: Session, role_ids: Iterable[str]) -> dict[str, list[Coding]]:
    """Each PractitionerRole's specialties as indexed, `(system, code)` by role id."""
    roles = sorted(set(role_ids))
    found: dict[str, list[Coding]] = {}
    if roles:
        for rid, system, code in session.execute(
            select(TokenIndex.resource_id, TokenIndex.system, TokenIndex.code).where(
                TokenIndex.resource_type == "PractitionerRole",
                TokenIndex.param == "specialty",
                TokenIndex.resource_id.in_(roles),
            )
        ):
            found.setdefault(rid, []).append((system, code))
    return found


# ---- finding a time (IHE ITI-115) ---------------------------------------------------------


def find_times(
    session: Session,
    schedules: list[ScheduleView],
    requesting: SiteCalendar,
    window: Interval,
    *,
    minutes: int,
    now: datetime,
    patient_id: str | None = None,
    limit: int,
) -> list[Proposal]:
    """Times of `minutes` (whole consecutive slots of one session) where the specialist is
    free, the patient too, and both sites are open (each site's own hours in its own zone,
    less its closures), from `now` on; earliest first, at most `limit`."""
    window = (max(window[0], now), window[1])
    if window[0] >= window[1]:
        return []
    calendars = load_calendars(session, {s.hospital_id for s in schedules})
    wide = (window[0] - timedelta(days=1), window[1] + timedelta(days=1))
    theirs = requesting.open_intervals(wide)
    busy = busy_times(
        session,
        practitioner_ids=[s.practitioner_id for s in schedules],
        patient_ids=[patient_id] if patient_id else [],
        window=window,
        now=now,
    )
    patient_busy = busy.get(("patient", patient_id or ""), Busy()).all()
    opened: dict[str, list[Interval]] = {
        h: c.open_intervals(wide) for h, c in calendars.items()
    }  # once per hospital, not per specialist
    both = {h: intersect(o, theirs) for h, o in opened.items()}
    length_wanted = timedelta(minutes=minutes)

    def proposals(schedule: ScheduleView) -> Iterator[Proposal]:
        calendar = calendars.get(schedule.hospital_id)
        if calendar is None:
            return
        held = busy.get(("practitioner", schedule.practitioner_id), Busy()).all()
        shared = both[schedule.hospital_id]
        for (start, slot_end), (_, session_end) in _slots(
            schedule, calendar.zone, opened[schedule.hospital_id], window
        ):
            length = slot_end - start
            count = max(1, math.ceil(length_wanted / length))
            end = start + count * length
            if end > session_end or end > window[1]:
                continue
            if not contains(shared, start, end) or overlaps(held, start, end):
                continue
            if overlaps(patient_busy, start, end):
                continue
            slots = [(start + i * length, start + (i + 1) * length) for i in range(count)]
            yield Proposal(schedule, start, end, slots)

    # Each specialist's times come in order; merging them lazily stops at `limit` instead of
    # working out every time of every specialist in the window.
    ordered = heapq.merge(
        *(proposals(s) for s in sorted(schedules, key=lambda s: s.schedule_id)),
        key=lambda p: (p.start, p.schedule.schedule_id),
    )
    return list(itertools.islice(ordered, limit))
