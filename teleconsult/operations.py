"""`$find`, `$hold` and `$book` on Appointment (IHE ITI Scheduling: ITI-115, ITI-116, ITI-117).

The FHIR face (fhir_mappings.teleconsult) reads the Parameters resource into a `FindQuery`
and renders what is found as proposed Appointments; what is read and how times are found is
here. Holding and booking are writes of the Appointment like any other, so they pass the
same rules (teleconsult.booking, teleconsult.appointments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from alliance import clock
from alliance.codes import TITLE_RANK
from alliance.config import Settings
from alliance.errors import BadRequest, Invalid
from alliance.fhir.registry import OperationContext, OperationResult, Resource
from alliance.fhir.store import Version
from alliance.records import keeper_of, reference_id
from referral.service import target_hospital
from teleconsult.presentation import reader_in_xinjiang
from teleconsult.slots import (
    Proposal,
    ScheduleFilter,
    find_times,
    hospital_of,
    load_calendars,
    load_schedules,
)


@dataclass(frozen=True)
class FindQuery:
    """The parameters of `$find`, read from its Parameters resource: ids, `system|code`
    tokens and instants (None where not given)."""

    start: datetime | None = None
    end: datetime | None = None
    minutes: int = 30
    title: str | None = None
    referral: str | None = None
    patients: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    requesting: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    practitioners: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()
    count: int | None = None


@dataclass
class Found:
    """What `$find` found: the proposals, the teleconsult request they are for (if named),
    the patient, and whether the caller is shown Xinjiang time."""

    proposals: list[Proposal]
    request: Resource | None
    patient_id: str | None
    xinjiang: bool


class SchedulingOperations:
    """IHE ITI Scheduling, bound to the settings (page sizes, how far `$find` looks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def find(self, ctx: OperationContext, query: FindQuery) -> Found:
        """IHE ITI-115 Find Potential Appointments: times where the specialist is free AND the
        time lies within both sites' working hours (each in its own zone, less closures),
        earliest first. Defaults: from now for 4 weeks, 30 minutes, the caller's hospital as
        the requesting site; a teleconsult request fills the patient, the hospital asked, the
        specialist asked and the requesting site."""
        session, now = ctx.session, clock.now()
        request: Resource | None = None
        if query.referral:
            request = ctx.store.read(
                "ServiceRequest", query.referral, session=session, visible=ctx.visible
            ).resource()
        patients = list(query.patients)
        if request is not None and not patients:
            patients = [reference_id(request.get("subject"), "Patient") or ""]
        patient_id = patients[0] if patients else None
        if patient_id:
            ctx.store.read("Patient", patient_id, session=session, visible=ctx.visible)
        start = query.start or now
        end = query.end or start + timedelta(days=28)
        if end <= start:
            raise BadRequest("end is after start")
        if end - start > timedelta(days=self.settings.teleconsult_find_max_days):
            raise BadRequest(
                f"$find looks at most {self.settings.teleconsult_find_max_days} days ahead; "
                "narrow start and end"
            )
        if not 5 <= query.minutes <= 480:
            raise BadRequest("minutes-duration is from 5 to 480")
        if query.title is not None and query.title not in TITLE_RANK:
            raise BadRequest(f"title is one of {', '.join(TITLE_RANK)}")
        hospitals = [hospital_of(session, o) or "" for o in query.organizations]
        roles = list(query.roles)
        if request is not None:
            if not hospitals:
                hospitals = [target_hospital(session, request)]
            asked = [
                r
                for p in request.get("performer") or []
                if (r := reference_id(p, "PractitionerRole"))
            ]
            roles = roles or asked
        requesting = (
            hospital_of(session, query.requesting[0])
            if query.requesting
            else (keeper_of(request) if request is not None else ctx.actor.hospital_id)
        )
        calendars = load_calendars(session, [requesting or ""])
        if requesting not in calendars:
            raise Invalid(
                f"the requesting site Organization/{requesting} keeps no teleconsult calendar",
                rule="outside-working-hours",
            )
        schedules = load_schedules(
            session,
            ScheduleFilter(
                role_ids=tuple(roles),
                practitioner_ids=query.practitioners,
                hospital_ids=tuple(hospitals),
                specialties=query.specialties,
                min_title=query.title,
            ),
        )
        count = min(
            self.settings.default_page_size if query.count is None else query.count,
            self.settings.max_page_size,
        )
        proposals = find_times(
            session,
            schedules,
            calendars[requesting or ""],
            (start, end),
            minutes=query.minutes,
            now=now,
            patient_id=patient_id,
            limit=count,
        )
        xinjiang = reader_in_xinjiang(session, ctx.actor.hospital_id)
        return Found(proposals, request, patient_id, xinjiang)

    def hold(self, ctx: OperationContext, proposal: Resource) -> OperationResult:
        """IHE ITI-116 Hold Appointment: the proposed Appointment (as $find answered it, with
        the teleconsult request in basedOn) is held: status pending until it is booked or the
        hold expires (ALLIANCE_TELECONSULT_HOLD_SECONDS)."""
        return self._propose(ctx, proposal, "pending")

    def book(
        self, ctx: OperationContext, held: str | None, proposal: Resource | None
    ) -> OperationResult:
        """IHE ITI-117 Book Appointment: a held Appointment (`held`, its id) becomes booked; a
        proposed one is booked directly. Two requests for one time: one wins, the other
        answers 409."""
        if held:
            current = ctx.store.read(
                "Appointment", held, session=ctx.session, visible=ctx.visible
            ).resource()
            current["status"] = "booked"
            updated = ctx.store.update(
                "Appointment",
                held,
                current,
                session=ctx.session,
                visible=ctx.visible,
                authorize=ctx.authorize,
                actor=ctx.actor,
            )
            return self._answer(ctx, updated.version)
        if proposal is None:
            raise BadRequest("$book takes appointment-reference (a hold) or appointment-resource")
        return self._propose(ctx, proposal, "booked")

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

    @staticmethod
    def _answer(ctx: OperationContext, version: Version) -> OperationResult:
        """The Appointment as its reader sees it (local time, the room to participants)."""
        shown = ctx.store.read(
            "Appointment", version.id, session=ctx.session, visible=ctx.visible, actor=ctx.actor
        )
        return OperationResult(
            json.loads(shown.content or "{}"), [(f"Appointment/{version.id}", version.patient_id)]
        )
