"""The FHIR face of teleconsult scheduling: the Parameters of `$find`, `$hold` and `$book`
(IHE ITI-115/116/117) read, proposals rendered as Appointments, and Slots (derived, FHIR R4
slot.html) served by a provider whose search values are read here and whose slots
teleconsult.slots finds. No I/O of its own.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from alliance import clock
from alliance.errors import BadRequest, NotFound
from alliance.fhir.registry import (
    OperationContext,
    OperationResult,
    Resource,
)
from alliance.fhir.search import split_values
from alliance.fhir.store import SearchResult, Version
from alliance.fhir.types import DateValue, Filter, SearchSpec
from alliance.fhir.values import date_range, instant, parse_reference
from alliance.numbers import whole_number
from teleconsult.booking import PARTICIPATION
from teleconsult.common import TELECONSULT_CATEGORY
from teleconsult.operations import FindQuery, Found
from teleconsult.presentation import LOCAL_TIME
from teleconsult.service import Teleconsult
from teleconsult.slots import (
    Proposal,
    SlotQuery,
    SlotView,
    role_specialties,
    search_slots,
    slot_by_id,
)
from teleconsult.time import format_for_site

#: A derived Slot's versionId names its state, so a conditional read never answers 304 for a
#: slot whose state changed.
SLOT_VERSION = {"free": 1, "busy-tentative": 2, "busy": 3}
SLOT_STATUSES = frozenset(SLOT_VERSION)


# ---- Parameters (FHIR R4 parameters.html) ------------------------------------------------------


def _params(parameters: Resource) -> dict[str, list[Any]]:
    """Each parameter's values: its `resource`, or its `value[x]`, by name."""
    found: dict[str, list[Any]] = {}
    for p in parameters.get("parameter") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise BadRequest("every parameter has a name")
        value = p.get("resource")
        if value is None:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
        found.setdefault(p["name"], []).append(value)
    return found


def _one(params: dict[str, list[Any]], name: str) -> Any:
    values = params.get(name) or []
    if len(values) > 1:
        raise BadRequest(f"parameter {name} is given more than once")
    return values[0] if values else None


def _ref_ids(values: list[Any], rtype: str, name: str) -> list[str]:
    """Ids of references given as Reference, `Type/id` or a bare id (comma-separated too)."""
    ids = []
    for value in values:
        texts = (
            [value.get("reference")]
            if isinstance(value, dict)
            else split_values(value)
            if isinstance(value, str)
            else [None]
        )
        for text in texts:
            if not isinstance(text, str) or not text:
                raise BadRequest(f"parameter {name} is a reference to a {rtype}")
            parsed = parse_reference(text, "")
            if parsed is None:
                ids.append(text)
            elif parsed[0] == rtype:
                ids.append(parsed[1])
            else:
                raise BadRequest(f"parameter {name} is a reference to a {rtype}, not {text}")
    return ids


def _tokens(values: list[Any], name: str) -> list[str]:
    """`system|code` or `code` tokens from Coding, CodeableConcept, code or string values."""
    tokens = []
    for value in values:
        if isinstance(value, str):
            tokens += split_values(value)
        elif isinstance(value, dict):
            codings = value.get("coding") if "coding" in value else [value]
            for c in codings or []:
                code = c.get("code")
                if not code:
                    raise BadRequest(f"parameter {name} needs a code")
                tokens.append(f"{c['system']}|{code}" if c.get("system") else code)
        else:
            raise BadRequest(f"parameter {name} is a code")
    return tokens


def _instant(value: Any, name: str, *, end: bool) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"parameter {name} is a dateTime")
    try:
        low, high = date_range(value)
    except ValueError:
        raise BadRequest(f"parameter {name}: {value!r} is not a FHIR dateTime") from None
    # A date (or month) as the end means through that day; an instant is itself.
    return high if end and "T" not in value else low


def _integer(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise BadRequest(f"parameter {name} is an integer")
    if isinstance(value, str) and (number := whole_number(value)) is not None:
        return number
    if isinstance(value, int):
        return value
    raise BadRequest(f"parameter {name} is an integer")


def _returned(params: dict[str, list[Any]], *names: str) -> Resource | None:
    for name in names:
        value = _one(params, name)
        if value is not None:
            if not isinstance(value, dict) or value.get("resourceType") != "Appointment":
                raise BadRequest(f"parameter {name} holds an Appointment resource")
            return value
    return None


#: What `$find` takes (IHE ITI-115, and the alliance's referral and title).
FIND_PARAMS = frozenset(
    {
        "start",
        "end",
        "specialty",
        "practitioner",
        "practitioner-role",
        "organization",
        "requesting-organization",
        "minutes-duration",
        "title",
        "patient",
        "referral",
        "_count",
    }
)


def find_query(parameters: Resource) -> FindQuery:
    """`$find`'s Parameters read into a FindQuery (teleconsult.operations): start, end,
    specialty, practitioner, practitioner-role, organization (the hospital asked),
    requesting-organization, minutes-duration, title (professional title at least), patient,
    referral (the teleconsult request), _count."""
    params = _params(parameters)
    unknown = sorted(set(params) - FIND_PARAMS)
    if unknown:
        raise BadRequest(f"$find does not know the parameter(s) {', '.join(unknown)}")
    referral = _ref_ids(params.get("referral") or [], "ServiceRequest", "referral")
    if len(referral) > 1:
        raise BadRequest("parameter referral is given more than once")
    title = _one(params, "title")
    if title is not None:
        title = (_tokens([title], "title") or [""])[0].split("|")[-1]
    count = _one(params, "_count")
    return FindQuery(
        start=_instant(_one(params, "start"), "start", end=False),
        end=_instant(_one(params, "end"), "end", end=True),
        minutes=_integer(_one(params, "minutes-duration"), "minutes-duration", 30),
        title=title,
        referral=referral[0] if referral else None,
        patients=tuple(_ref_ids(params.get("patient") or [], "Patient", "patient")),
        organizations=tuple(
            _ref_ids(params.get("organization") or [], "Organization", "organization")
        ),
        requesting=tuple(
            _ref_ids(
                params.get("requesting-organization") or [],
                "Organization",
                "requesting-organization",
            )
        ),
        roles=tuple(_ref_ids(params.get("practitioner-role") or [], "PractitionerRole", "role")),
        practitioners=tuple(
            _ref_ids(params.get("practitioner") or [], "Practitioner", "practitioner")
        ),
        specialties=tuple(_tokens(params.get("specialty") or [], "specialty")),
        count=None if count is None else _integer(count, "_count", 0),
    )


class AppointmentOperations:
    """`$find`, `$hold` and `$book` on Appointment (IHE ITI Scheduling): the Parameters read
    here, the work done by teleconsult.operations."""

    def __init__(self, tele: Teleconsult) -> None:
        self.operations = tele.operations

    def find(self, ctx: OperationContext, parameters: Resource) -> OperationResult:
        """IHE ITI-115 Find Potential Appointments: a searchset of proposed Appointments,
        earliest first (teleconsult.operations.SchedulingOperations.find)."""
        found = self.operations.find(ctx, find_query(parameters))
        doctor = ctx.actor.practitioner_id
        entries = [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": _proposed(p, found, doctor),
                "search": {"mode": "match"},
            }
            for p in found.proposals
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
        patient_id = found.patient_id
        touched: list[tuple[str | None, str | None]] = (
            [(f"Patient/{patient_id}", patient_id)] if patient_id else []
        )
        return OperationResult(bundle, touched)

    def hold(self, ctx: OperationContext, parameters: Resource) -> OperationResult:
        """IHE ITI-116 Hold Appointment: `appointment-resource`, the proposed Appointment."""
        params = _params(parameters)
        body = _returned(params, "appointment-resource", "appointment")
        if body is None:
            raise BadRequest("$hold takes the proposed Appointment in appointment-resource")
        return self.operations.hold(ctx, body)

    def book(self, ctx: OperationContext, parameters: Resource) -> OperationResult:
        """IHE ITI-117 Book Appointment: `appointment-reference` (a hold, or the held resource
        itself), or `appointment-resource` (a proposal, without id) booked directly."""
        params = _params(parameters)
        held = _ref_ids(params.get("appointment-reference") or [], "Appointment", "reference")
        body = _returned(params, "appointment-resource", "appointment")
        if not held and body is not None and body.get("id") and body.get("status") == "pending":
            held = [body["id"]]
        return self.operations.book(ctx, held[0] if held else None, body)


def _proposed(p: Proposal, found: Found, doctor: str | None) -> Resource:
    """A proposal as a proposed Appointment (IHE ITI-115), its time as the caller's site
    shows it."""
    request, patient_id = found.request, found.patient_id
    participants: list[Resource] = [
        {
            "type": [
                {
                    "coding": [
                        {
                            "system": PARTICIPATION,
                            "code": "CON",
                            "display": "consultant",
                        }
                    ]
                }
            ],
            "actor": {"reference": f"PractitionerRole/{p.schedule.role_id}"},
            "required": "required",
            "status": "needs-action",
        }
    ]
    if patient_id:
        participants.append(
            {
                "actor": {"reference": f"Patient/{patient_id}"},
                "required": "required",
                "status": "accepted",
            }
        )
    if doctor:
        participants.append(
            {"actor": {"reference": f"Practitioner/{doctor}"}, "status": "accepted"}
        )
    appt: Resource = {
        "resourceType": "Appointment",
        "extension": [
            {"url": LOCAL_TIME, "valueString": format_for_site(p.start, xinjiang=found.xinjiang)}
        ],
        "status": "proposed",
        "serviceCategory": [TELECONSULT_CATEGORY],
        "start": instant(p.start),
        "end": instant(p.end),
        "minutesDuration": int((p.end - p.start) / timedelta(minutes=1)),
        "slot": [
            {"reference": f"Slot/{SlotView(p.schedule, s, e, 'free').id}"} for s, e in p.slots
        ],
        "participant": participants,
    }
    if request is not None:
        appt["basedOn"] = [{"reference": f"ServiceRequest/{request['id']}"}]
    return appt


# ---- Slot: derived, served by a provider --------------------------------------------------------


class SlotProvider:
    """Slots (FHIR R4 slot.html) derived from the consult schedules, read and searched; they
    are directory data (times, no patient), visible to every signed-in user with the scope.
    The kernel parses the search (alliance.fhir.search); its filters are read here, the
    slots found by teleconsult.slots."""

    def __init__(self, max_days: int) -> None:
        self.max_days = max_days

    def read(self, session: Session, resource_id: str, visible: ColumnElement[bool]) -> Version:
        view = slot_by_id(session, resource_id, now=clock.now())
        if view is None:
            raise NotFound(f"Slot/{resource_id} is not known")
        return self._versions(session, [view])[0]

    def search_parsed(
        self, session: Session, spec: SearchSpec, *, visible: ColumnElement[bool]
    ) -> SearchResult:
        """The parsed search over the derived slots, by start then schedule, paged by offset:
        every filter holds, the values of one are alternatives. `start` takes every date
        prefix: the slots are generated only where a match can start (never before now, at
        most `max_days` ahead), and kept where the prefixes match."""
        if spec.page_after is not None:
            raise BadRequest("Slot pages by _page_offset", expression=["_page_after"])
        if spec.order:
            raise BadRequest(
                "Slots come by start then schedule; _sort is not supported on Slot",
                expression=["_sort"],
            )
        now = clock.now()
        lo, hi = now, None
        schedules: frozenset[str] | None = None
        organizations: list[tuple[str, ...]] = []
        specialties: list[tuple[str, ...]] = []
        statuses: frozenset[str] | None = None
        ids: frozenset[str] | None = None
        updated = True
        starts: list[Filter] = []
        for f in spec.filters:
            if f.modifier == "not" and f.name != "status":
                raise BadRequest(
                    f"{f.name}:not is not supported on Slot", expression=[f"{f.name}:not"]
                )
            if f.name == "schedule":
                named = frozenset(_ids(f, "Schedule"))
                schedules = named if schedules is None else schedules & named
            elif f.name == "organization":
                organizations.append(tuple(_ids(f, "Organization")))
            elif f.name == "status":
                asked = frozenset(t.code for t in f.tokens if t.code is not None)
                if any(t.code is None for t in f.tokens):  # `system|`: any status
                    asked = SLOT_STATUSES
                asked = SLOT_STATUSES - asked if f.modifier == "not" else asked
                statuses = asked if statuses is None else statuses & asked
            elif f.name == "specialty":
                specialties.append(tuple(f"{t.system or ''}|{t.code or ''}" for t in f.tokens))
            elif f.name == "_id":
                named = frozenset(f.values)
                ids = named if ids is None else ids & named
            elif f.name == "_lastUpdated":
                # A derived slot is as of now: the condition holds for all or for none.
                updated = updated and any(d.matches(now, now) for d in f.dates)
            elif f.name == "start":
                earliest, latest = _hull(f.dates)
                if earliest is not None:
                    lo = max(lo, earliest)
                if latest is not None:
                    hi = latest if hi is None else min(hi, latest)
                starts.append(f)
            else:
                raise BadRequest(f"{f.name} is not supported on Slot", expression=[f.name])
        query = SlotQuery(
            start=lo,
            end=hi,
            schedule_ids=schedules,
            organization_ids=tuple(organizations),
            specialties=tuple(specialties),
            statuses=statuses,
            ids=ids,
            updated=updated,
        )
        views = [
            v
            for v in search_slots(session, query, now=now, max_days=self.max_days)
            if all(any(d.matches(*_served(v.start)) for d in f.dates) for f in starts)
        ]
        total = len(views) if spec.wants_total else None
        if spec.summary_count or spec.count == 0:
            return SearchResult(spec, [], [], total, None)
        page = views[spec.offset : spec.offset + spec.count]
        more = spec.offset + spec.count < len(views)
        next_page = ("_page_offset", str(spec.offset + spec.count)) if more else None
        return SearchResult(spec, self._versions(session, page), [], total, next_page)

    @staticmethod
    def _versions(session: Session, views: list[SlotView]) -> list[Version]:
        specialties = role_specialties(session, (v.schedule.role_id for v in views))
        now = clock.now()
        out = []
        for v in views:
            version = SLOT_VERSION[v.status]
            slot: Resource = {
                "resourceType": "Slot",
                "id": v.id,
                "meta": {"versionId": str(version), "lastUpdated": instant(now)},
                "serviceCategory": [TELECONSULT_CATEGORY],
                "schedule": {"reference": f"Schedule/{v.schedule.schedule_id}"},
                "status": v.status,
                "start": instant(v.start),
                "end": instant(v.end),
            }
            codings = specialties.get(v.schedule.role_id)
            if codings:
                slot["specialty"] = [
                    {"coding": [{"system": s, "code": c} if s else {"code": c}]} for s, c in codings
                ]
            content = json.dumps(slot, ensure_ascii=False, separators=(",", ":"))
            out.append(Version("Slot", v.id, version, now, "create", content))
        return out


def _ids(f: Filter, rtype: str) -> list[str]:
    """The ids a reference filter names of `rtype` (one that names another type matches
    nothing, as in the generic search)."""
    return [i for t, i in f.references if t in (None, rtype)]


def _served(start: datetime) -> tuple[datetime, datetime]:
    """The instants a slot's start covers as it is served (`instant`, to the millisecond),
    as the generic index would keep it: a range, not a point, so that `eb` a slot's own start
    does not match it (a point would: it ends where it begins)."""
    return date_range(instant(start))


def _hull(dates: tuple[DateValue, ...]) -> tuple[datetime | None, datetime | None]:
    """Where a start matching one of the alternatives can lie, `[earliest, latest]` (None:
    unbounded)."""
    windows = [d.window() for d in dates]
    lows, highs = [w[0] for w in windows], [w[1] for w in windows]
    earliest = None if None in lows else min(lo for lo in lows if lo is not None)
    latest = None if None in highs else max(hi for hi in highs if hi is not None)
    return earliest, latest
