"""The FHIR face of teleconsults: HealthcareService (a hospital's working calendar), Schedule,
Slot (derived), Appointment with `$find`, `$hold` and `$book` (IHE ITI-115/116/117),
AppointmentResponse, Encounter and DiagnosticReport (the signed opinion).

Provenance, ServiceRequest, Task, Consent and DocumentReference are the referral's
(fhir_mappings.referral): a teleconsult is a referral of category teleconsult.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.appointmentresponse import AppointmentResponse
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.healthcareservice import HealthcareService
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.slot import Slot
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from alliance.codes import TITLE_RANK
from alliance.config import Settings
from alliance.errors import BadRequest, Invalid, Issue, NotFound
from alliance.fhir.models import ResourceRow, TokenIndex
from alliance.fhir.registry import (
    ALL_INTERACTIONS,
    Operation,
    OperationContext,
    OperationResult,
    Registry,
    Resource,
    ResourceDefinition,
    SearchParam,
    WriteContext,
)
from alliance.fhir.search import SearchSpec, split_values
from alliance.fhir.store import SearchResult, Version
from alliance.fhir.values import date_range, instant, parse_reference
from alliance.records import keeper_of, record_patient_of, reference_id
from referral.models import Referral
from referral.service import ReferralRules, target_hospital
from teleconsult.opinion import OpinionRules
from teleconsult.service import (
    LOCAL_TIME,
    TELECONSULT_CATEGORY,
    TeleconsultRules,
    reader_in_xinjiang,
)
from teleconsult.slots import (
    Proposal,
    ScheduleFilter,
    SlotView,
    find_times,
    hospital_of,
    list_slots,
    load_calendars,
    load_schedules,
    slot_by_id,
)
from teleconsult.time import format_for_site

NO_DELETE = ALL_INTERACTIONS - {"delete"}
READ_ONLY = frozenset({"read", "vread", "history-instance", "search-type"})
IHE = "https://profiles.ihe.net/ITI/Scheduling/OperationDefinition"
#: A derived Slot's versionId names its state, so a conditional read never answers 304 for a
#: slot whose state changed.
SLOT_VERSION = {"free": 1, "busy-tentative": 2, "busy": 3}


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
    if isinstance(value, str) and value.isdigit():
        return int(value)
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


class TeleconsultOperations:
    """`$find`, `$hold` and `$book` on Appointment (IHE ITI Scheduling)."""

    def __init__(self, settings: Settings, rules: TeleconsultRules) -> None:
        self.settings = settings
        self.rules = rules

    def find(self, ctx: OperationContext, parameters: Resource) -> OperationResult:
        """IHE ITI-115 Find Potential Appointments: proposed Appointments where the specialist
        is free AND the time lies within both sites' working hours (each in its own zone, less
        closures), earliest first. Parameters: start, end (default now and 4 weeks on),
        specialty, practitioner, practitioner-role, organization (the hospital asked),
        requesting-organization (default: the caller's), minutes-duration (default 30),
        title (professional title at least), patient, referral (the teleconsult request, which
        fills the patient, the hospital asked and the requesting site), _count."""
        session, now = ctx.session, datetime.now(UTC)
        params = _params(parameters)
        known = {
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
        unknown = sorted(set(params) - known)
        if unknown:
            raise BadRequest(f"$find does not know the parameter(s) {', '.join(unknown)}")
        request: Resource | None = None
        referral = _ref_ids(params.get("referral") or [], "ServiceRequest", "referral")
        if len(referral) > 1:
            raise BadRequest("parameter referral is given more than once")
        if referral:
            request = ctx.store.read(
                "ServiceRequest", referral[0], session=session, visible=ctx.visible
            ).resource()
        patients = _ref_ids(params.get("patient") or [], "Patient", "patient")
        if request is not None and not patients:
            patients = [reference_id(request.get("subject"), "Patient") or ""]
        patient_id = patients[0] if patients else None
        if patient_id:
            ctx.store.read("Patient", patient_id, session=session, visible=ctx.visible)
        start = _instant(_one(params, "start"), "start", end=False) or now
        end = _instant(_one(params, "end"), "end", end=True) or start + timedelta(days=28)
        if end <= start:
            raise BadRequest("end is after start")
        if end - start > timedelta(days=self.settings.teleconsult_find_max_days):
            raise BadRequest(
                f"$find looks at most {self.settings.teleconsult_find_max_days} days ahead; "
                "narrow start and end"
            )
        minutes = _integer(_one(params, "minutes-duration"), "minutes-duration", 30)
        if not 5 <= minutes <= 480:
            raise BadRequest("minutes-duration is from 5 to 480")
        title = _one(params, "title")
        if title is not None:
            title = (_tokens([title], "title") or [""])[0].split("|")[-1]
            if title not in TITLE_RANK:
                raise BadRequest(f"title is one of {', '.join(TITLE_RANK)}")
        hospitals = [
            hospital_of(session, o) or ""
            for o in _ref_ids(params.get("organization") or [], "Organization", "organization")
        ]
        roles = _ref_ids(params.get("practitioner-role") or [], "PractitionerRole", "role")
        if request is not None:
            if not hospitals:
                hospitals = [target_hospital(session, request)]
            asked = [
                r
                for p in request.get("performer") or []
                if (r := reference_id(p, "PractitionerRole"))
            ]
            roles = roles or asked
        requesting_ids = _ref_ids(
            params.get("requesting-organization") or [], "Organization", "requesting-organization"
        )
        requesting = (
            hospital_of(session, requesting_ids[0])
            if requesting_ids
            else (keeper_of(request) if request is not None else ctx.actor.hospital_id)
        )
        calendars = load_calendars(session, [requesting or ""])
        if requesting not in calendars:
            raise Invalid(
                f"[outside-working-hours] the requesting site Organization/{requesting} keeps "
                "no teleconsult calendar"
            )
        schedules = load_schedules(
            session,
            ScheduleFilter(
                role_ids=tuple(roles),
                practitioner_ids=tuple(
                    _ref_ids(params.get("practitioner") or [], "Practitioner", "practitioner")
                ),
                hospital_ids=tuple(hospitals),
                specialties=tuple(_tokens(params.get("specialty") or [], "specialty")),
                min_title=title,
            ),
        )
        count = min(
            _integer(_one(params, "_count"), "_count", self.settings.default_page_size),
            self.settings.max_page_size,
        )
        proposals = find_times(
            session,
            schedules,
            calendars[requesting or ""],
            (start, end),
            minutes=minutes,
            now=now,
            patient_id=patient_id,
            limit=count,
        )
        xinjiang = reader_in_xinjiang(session, ctx.actor.hospital_id)
        doctor = ctx.actor.practitioner_id
        entries = [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": self._proposed(p, request, patient_id, doctor, xinjiang),
                "search": {"mode": "match"},
            }
            for p in proposals
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
        touched: list[tuple[str | None, str | None]] = (
            [(f"Patient/{patient_id}", patient_id)] if patient_id else []
        )
        return OperationResult(bundle, touched)

    @staticmethod
    def _proposed(
        p: Proposal,
        request: Resource | None,
        patient_id: str | None,
        doctor: str | None,
        xinjiang: bool,
    ) -> Resource:
        participants: list[Resource] = [
            {
                "type": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/"
                                "v3-ParticipationType",
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
                {"url": LOCAL_TIME, "valueString": format_for_site(p.start, xinjiang=xinjiang)}
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

    def _answer(self, ctx: OperationContext, version: Version) -> OperationResult:
        """The Appointment as its reader sees it (local time, the room to participants)."""
        shown = ctx.store.read(
            "Appointment", version.id, session=ctx.session, visible=ctx.visible, actor=ctx.actor
        )
        return OperationResult(
            json.loads(shown.content or "{}"), [(f"Appointment/{version.id}", version.patient_id)]
        )

    def hold(self, ctx: OperationContext, parameters: Resource) -> OperationResult:
        """IHE ITI-116 Hold Appointment: the proposed Appointment (`appointment-resource`, as
        $find answered it, with the teleconsult request in basedOn) is held: status pending
        until it is booked or the hold expires (ALLIANCE_TELECONSULT_HOLD_SECONDS)."""
        params = _params(parameters)
        body = _returned(params, "appointment-resource", "appointment")
        if body is None:
            raise BadRequest("$hold takes the proposed Appointment in appointment-resource")
        return self._propose(ctx, body, "pending")

    def _propose(self, ctx: OperationContext, proposal: Resource, status: str) -> OperationResult:
        """A proposed Appointment written as a new one with `status` (pending: held)."""
        body = {k: v for k, v in proposal.items() if k not in ("id", "meta")}
        body["status"] = status
        created = ctx.store.create(
            "Appointment",
            body,
            session=ctx.session,
            visible=ctx.visible,
            authorize=ctx.authorize,
            actor=ctx.actor,
        )
        return self._answer(ctx, created.version)

    def book(self, ctx: OperationContext, parameters: Resource) -> OperationResult:
        """IHE ITI-117 Book Appointment: a held Appointment (`appointment-reference`, or the
        held resource itself) becomes booked; a proposed one (`appointment-resource` without
        id) is booked directly. Two requests for one time: one wins, the other answers 409."""
        params = _params(parameters)
        held = _ref_ids(params.get("appointment-reference") or [], "Appointment", "reference")
        body = _returned(params, "appointment-resource", "appointment")
        if not held and body is not None and body.get("id") and body.get("status") == "pending":
            held = [body["id"]]
        if held:
            current = ctx.store.read(
                "Appointment", held[0], session=ctx.session, visible=ctx.visible
            ).resource()
            current["status"] = "booked"
            updated = ctx.store.update(
                "Appointment",
                held[0],
                current,
                session=ctx.session,
                visible=ctx.visible,
                authorize=ctx.authorize,
                actor=ctx.actor,
            )
            return self._answer(ctx, updated.version)
        if body is None:
            raise BadRequest("$book takes appointment-reference (a hold) or appointment-resource")
        return self._propose(ctx, body, "booked")


# ---- Slot: derived, served by a provider --------------------------------------------------------


class SlotProvider:
    """Slots (FHIR R4 slot.html) derived from the consult schedules, read and searched; they
    are directory data (times, no patient), visible to every signed-in user with the scope."""

    PARAMS = ("schedule", "start", "status", "specialty", "organization", "_id", "_lastUpdated")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def read(self, session: Session, resource_id: str, visible: ColumnElement[bool]) -> Version:
        view = slot_by_id(session, resource_id, now=datetime.now(UTC))
        if view is None:
            raise NotFound(f"Slot/{resource_id} is not known")
        return self._versions(session, [view])[0]

    def search(
        self,
        session: Session,
        params: list[tuple[str, str]],
        *,
        default_count: int,
        max_count: int,
        lenient: bool,
        visible: ColumnElement[bool],
    ) -> SearchResult:
        now = datetime.now(UTC)
        spec = SearchSpec("Slot", count=default_count)
        lo, hi = now, None
        schedules: list[str] = []
        statuses: set[str] | None = None
        specialties: list[str] = []
        hospitals: list[str] = []
        ids: list[str] | None = None
        updated = True
        for raw, value in params:
            name = raw.partition(":")[0]
            if name in ("_format", "_pretty"):
                continue
            if name == "_count":
                if not value.isdigit():
                    raise BadRequest("_count must be a non-negative integer")
                spec.count = min(int(value), max_count)
                continue
            if name == "_page_offset":
                if not value.isdigit():
                    raise BadRequest("_page_offset must be a non-negative integer")
                spec.offset = int(value)
                continue
            if name == "_total":
                spec.total = value
                continue
            if name not in self.PARAMS or ":" in raw:
                message = f"unknown search parameter {raw!r} for Slot"
                if not lenient:
                    raise BadRequest(message, expression=[raw])
                spec.warnings.append(Issue(f"{message} (ignored)", "not-supported", "warning"))
                continue
            spec.applied.append((raw, value))
            if name == "schedule":
                schedules += _search_ids(value, "Schedule")
            elif name == "status":
                statuses = (statuses or set()) | set(split_values(value))
            elif name == "specialty":
                specialties += split_values(value)
            elif name == "organization":
                hospitals += [
                    hospital_of(session, o) or "" for o in _search_ids(value, "Organization")
                ]
            elif name == "_id":
                ids = (ids or []) + split_values(value)
            elif name == "_lastUpdated":
                # A derived slot is as of now: the condition holds for all or for none.
                updated = updated and any(_holds_now(v, now) for v in split_values(value))
            else:
                lo, hi = _start_bounds(value, lo, hi)
        hi = hi or lo + timedelta(days=14)
        lo = max(lo, now)
        if hi - lo > timedelta(days=self.settings.teleconsult_find_max_days):
            raise BadRequest(
                f"Slot searches look at most {self.settings.teleconsult_find_max_days} days "
                "ahead; narrow start"
            )
        found = load_schedules(
            session,
            ScheduleFilter(
                schedule_ids=tuple(schedules),
                hospital_ids=tuple(hospitals),
                specialties=tuple(specialties),
            ),
        )
        if ids is not None:
            by_id = [v for i in ids if (v := slot_by_id(session, i, now=now)) is not None]
            wanted = {f.schedule_id for f in found}
            views = [
                v
                for v in by_id
                if v.schedule.schedule_id in wanted
                and (statuses is None or v.status in statuses)
                and v.start >= lo
                and (hi is None or v.start < hi)
            ]
        else:
            views = list_slots(session, found, (lo, hi), now=now, statuses=statuses)
        if not updated or hi <= lo:
            views = []
        page = views[spec.offset : spec.offset + spec.count]
        more = spec.offset + spec.count < len(views)
        total = len(views) if spec.total != "none" or spec.count == 0 else None
        next_page = ("_page_offset", str(spec.offset + spec.count)) if more else None
        return SearchResult(spec, self._versions(session, page), [], total, next_page)

    @staticmethod
    def _versions(session: Session, views: list[SlotView]) -> list[Version]:
        roles = sorted({v.schedule.role_id for v in views})
        specialties: dict[str, list[Resource]] = {}
        if roles:
            for rid, system, code in session.execute(
                select(TokenIndex.resource_id, TokenIndex.system, TokenIndex.code).where(
                    TokenIndex.resource_type == "PractitionerRole",
                    TokenIndex.param == "specialty",
                    TokenIndex.resource_id.in_(roles),
                )
            ):
                coding = {"system": system, "code": code} if system else {"code": code}
                specialties.setdefault(rid, []).append({"coding": [coding]})
        now = datetime.now(UTC)
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
            if specialties.get(v.schedule.role_id):
                slot["specialty"] = specialties[v.schedule.role_id]
            content = json.dumps(slot, ensure_ascii=False, separators=(",", ":"))
            out.append(Version("Slot", v.id, version, now, "create", content))
        return out


def _holds_now(value: str, now: datetime) -> bool:
    """Whether `now` meets a date search value (prefixes of FHIR R4 search.html#prefix)."""
    prefix = value[:2] if value[:2] in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb") else "eq"
    text = value[2:] if prefix != "eq" or value.startswith("eq") else value
    try:
        low, high = date_range(text)
    except ValueError:
        raise BadRequest(f"{value!r} is not a valid date search value") from None
    return {
        "eq": low <= now < high,
        "ne": not low <= now < high,
        "gt": now >= high,
        "sa": now >= high,
        "ge": now >= low,
        "lt": now < low,
        "eb": now < low,
        "le": now < high,
    }[prefix]


def _search_ids(value: str, rtype: str) -> list[str]:
    """Ids a reference search value names; a reference to another type matches nothing, as in
    the generic search (alliance.fhir.search)."""
    ids = []
    for text in split_values(value):
        parsed = parse_reference(text, "")
        ids.append(text if parsed is None else parsed[1] if parsed[0] == rtype else "")
    return ids


def _start_bounds(
    value: str, lo: datetime, hi: datetime | None
) -> tuple[datetime, datetime | None]:
    """Narrow [lo, hi) by a `start` value with a prefix (eq, ge, gt, le, lt)."""
    prefix = value[:2] if value[:2] in ("eq", "ge", "gt", "le", "lt") else "eq"
    text = value[2:] if value[:2] in ("eq", "ge", "gt", "le", "lt") else value
    try:
        low, high = date_range(text)
    except ValueError:
        raise BadRequest(f"{value!r} is not a valid date search value") from None
    if prefix in ("eq", "ge"):
        lo = max(lo, low)
    if prefix == "gt":
        lo = max(lo, high)
    if prefix in ("eq", "le"):
        hi = min(hi, high) if hi else high
    if prefix == "lt":
        hi = min(hi, low) if hi else low
    return lo, hi


# ---- definitions ------------------------------------------------------------------------------


def definitions(settings: Settings) -> list[ResourceDefinition]:
    rules = TeleconsultRules(settings, ReferralRules(settings))
    opinion = OpinionRules(settings)
    operations = TeleconsultOperations(settings, rules)
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
            prepare=rules.prepare_service,
            on_write=rules.check_service,
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
            prepare=rules.prepare_schedule,
            on_write=rules.check_schedule,
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
                    "When it starts (eq, ge, gt, le, lt; default the next 14 days)",
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
            provider=SlotProvider(settings),
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
                    condition=rules.practitioner_condition,
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
                    condition=rules.upcoming_condition,
                ),
            ],
            "A teleconsult booking (IHE ITI Scheduling): $find proposes times free for the "
            "specialist and inside both sites' working hours, $hold holds one, $book books it "
            "(or POST an Appointment on free slots). Reschedule by new slots, cancel with a "
            "reason, noshow after the start; the video room (virtualService) is shown to "
            "participants only.",
            interactions=NO_DELETE,
            prepare=rules.prepare_appointment,
            on_write=rules.check_appointment,
            after_write=rules.after_appointment,
            present_to=rules.present_appointments,
            patient_of=_appointment_patient,
            organization_of=keeper_of,
            writers=rules.appointment_writers,
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
            prepare=rules.prepare_response,
            on_write=rules.check_response,
            after_write=rules.after_response,
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
            prepare=rules.prepare_encounter,
            on_write=rules.check_encounter,
            after_write=rules.after_encounter,
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
            after_write=opinion.after,
            patient_of=_patient("subject"),
            organization_of=keeper_of,
            versioned_updates=True,
        ),
    ]


def follow_tasks(registry: Registry, settings: Settings) -> None:
    """A consult request whose Task is cancelled, declined or failed frees its bookings: the
    Task's after-write hook (the referral's) is followed by the teleconsult's."""
    task = registry.get("Task")
    first = task.after_write
    rules = TeleconsultRules(settings, ReferralRules(settings))

    def after(ctx: WriteContext, version: Version, previous: Resource | None) -> None:
        if first is not None:
            first(ctx, version, previous)
        row = ctx.session.get(Referral, version.id)
        if row is not None and row.category == "teleconsult":
            rules.after_task(ctx, version, previous)

    task.after_write = after
