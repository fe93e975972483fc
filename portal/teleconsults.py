"""Teleconsults: free times and booking, the specialist's calendar, answering and signing."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alliance import clock
from alliance.clock import BEIJING
from alliance.codes import (
    DEPARTMENT,
)
from alliance.errors import AllianceError, Invalid
from alliance.fhir.registry import Operation, OperationResult
from alliance.fhir.types import SearchResult, Version
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from portal.i18n import rule_words, translator
from portal.referrals import ReferralPages
from portal.shell import Page, correctable, instant_of
from portal.views import (
    consultant_of,
    day_label,
    extension,
    local_time,
    parse_day,
    practitioner_line,
)
from referral.commands import Diagnosis
from teleconsult.commands import answer_consult, sign_opinion
from teleconsult.presentation import VIRTUAL_SERVICE


class ConsultPages(ReferralPages):
    # ---- teleconsults ---------------------------------------------------------------------------

    def _operation(self, name: str) -> Operation:
        return self.store.registry.get("Appointment").operations[name]

    async def consult_times(
        self, request: Request, session: sessions.WebSession, task_id: str
    ) -> Page:
        """A week of free times of the specialists asked, inside both sites' working hours
        ($find), by day (date and weekday), each with the specialist's name and title; weeks
        paged forward and back or chosen with a date."""
        today = clock.today()
        first = parse_day(request.query_params.get("from"), today)

        def work(s: Session, ctx: Context) -> dict[str, Any]:
            task = self.store.read("Task", task_id, session=s, visible=ctx.visible).resource()
            sr_ref = task["focus"]["reference"]
            sr = self.store.read(
                "ServiceRequest",
                sr_ref.removeprefix("ServiceRequest/"),
                session=s,
                visible=ctx.visible,
            ).resource()
            dept_ref = sr["performer"][0]["reference"].removeprefix("Organization/")
            dept = self.store.read("Organization", dept_ref, session=s, visible=ctx.visible)
            code = next(
                (
                    c["code"]
                    for t in dept.resource().get("type") or []
                    for c in t.get("coding") or []
                    if c.get("system") == DEPARTMENT
                ),
                None,
            )
            params: list[dict[str, Any]] = [
                {"name": "referral", "valueReference": {"reference": sr_ref}},
                {"name": "start", "valueDateTime": first.isoformat()},
                {"name": "end", "valueDateTime": (first + timedelta(days=7)).isoformat()},
            ]
            if code:
                params.append({"name": "specialty", "valueString": code})
            result = self._operation("find").run(
                self.acting(s, ctx), {"resourceType": "Parameters", "parameter": params}
            )
            proposals = [e["resource"] for e in result.resource.get("entry", [])]
            return {
                "task": task,
                "proposals": proposals,
                "specialists": self._specialists(s, ctx, proposals),
            }

        data = await self.run(
            request,
            session,
            Interaction("search", query=f"Appointment/$find for Task/{task_id}"),
            work,
        )
        t = translator(session.lang)
        days: dict[str, list[dict[str, Any]]] = {}
        for p in data["proposals"]:
            start = instant_of(p["start"])
            assert start is not None  # $find answers instants
            day = start.astimezone(BEIJING).date()
            days.setdefault(day_label(day, t), []).append(
                {
                    "label": local_time(p) or p["start"],
                    "who": data["specialists"].get(consultant_of(p) or "", ""),
                    "json": json.dumps(p, ensure_ascii=False),
                }
            )
        return Page(
            "consult_times.html",
            {
                "task": data["task"],
                "days": days,
                "first": first.isoformat(),
                "earlier": (first - timedelta(days=7)).isoformat() if first > today else None,
                "later": (first + timedelta(days=7)).isoformat(),
                "today": today.isoformat(),
            },
        )

    def _specialists(
        self, s: Session, ctx: Context, proposals: list[dict[str, Any]]
    ) -> dict[str, str]:
        """`陈志明 主任医师` by PractitionerRole reference, for the roles proposed."""
        roles = sorted({r for p in proposals if (r := consultant_of(p))})
        if not roles:
            return {}
        found = self._search(
            s,
            ctx,
            "PractitionerRole",
            [
                ("_id", ",".join(r.removeprefix("PractitionerRole/") for r in roles)),
                ("_include", "PractitionerRole:practitioner"),
            ],
            len(roles),
        )
        people = {f"Practitioner/{v.id}": v.resource() for v in found.included}
        named = {}
        for v in found.matches:
            person = people.get(str(v.resource().get("practitioner", {}).get("reference")))
            if person is not None:
                named[f"PractitionerRole/{v.id}"] = practitioner_line(person)
        return named

    async def consult_book(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Page | Response:
        """Book the time chosen, once the doctor confirmed it: the first post shows what will
        be booked (time, specialist) and asks; the confirmed post books ($book)."""
        try:
            proposal = json.loads(str(form.get("proposal", "")))
        except ValueError:
            raise Invalid("choose one of the times offered", rule="consult-time-choice") from None
        if not isinstance(proposal, dict) or "start" not in proposal:
            raise Invalid("choose one of the times offered", rule="consult-time-choice")
        if form.get("confirm") != "yes":
            return Page(
                "consult_confirm.html",
                {
                    "task_id": task_id,
                    "when": local_time(proposal) or proposal["start"],
                    "who": str(form.get("who", "")),
                    "proposal": json.dumps(proposal, ensure_ascii=False),
                },
            )

        def work(s: Session, ctx: Context) -> OperationResult:
            return self._operation("book").run(
                self.acting(s, ctx),
                {
                    "resourceType": "Parameters",
                    "parameter": [{"name": "appointment-resource", "resource": proposal}],
                },
            )

        try:
            await self.run(request, session, Interaction("create", "Appointment"), work)
        except AllianceError as exc:
            if not correctable(exc):
                raise
            page = await self.consult_times(request, session, task_id)
            page.context["error"] = rule_words(exc, session.lang)
            page.status = exc.status
            return page
        return RedirectResponse(f"/referrals/{task_id}", 303)

    async def consults(self, request: Request, session: sessions.WebSession) -> Page:
        """The specialist's consult calendar: booked and running consults, with the video
        link shown to participants."""
        claims = self.claims(session)
        who = f"Practitioner/{claims.practitioner_id}" if claims.practitioner_id else None

        def work(s: Session, ctx: Context) -> tuple[SearchResult, set[str]]:
            params = [("status", "booked,arrived,pending"), ("_sort", "date"), ("_count", "100")]
            if who:
                params.append(("practitioner", who))
            found = self._search(s, ctx, "Appointment", params, 100, reader=True)
            own = (
                {
                    f"PractitionerRole/{v.id}"
                    for v in self._search(
                        s, ctx, "PractitionerRole", [("practitioner", who)], 20
                    ).matches
                }
                if who
                else set()
            )
            return found, own

        result, own_roles = await self.run(
            request,
            session,
            Interaction("search", query="consult calendar"),
            work,
            lambda r: [Touched(f"Appointment/{v.id}", v.patient_id) for v in r[0].matches],
        )
        rows = []
        for v in result.matches:
            appt = v.resource()
            room = extension(appt, VIRTUAL_SERVICE)
            link = next(
                (
                    x.get("valueUrl")
                    for x in (room or {}).get("extension", [])
                    if x.get("url") == "address"
                ),
                None,
            )
            task_ref = next((b["reference"] for b in appt.get("basedOn") or []), "")
            rows.append(
                {
                    "id": v.id,
                    "when": local_time(appt) or appt.get("start", ""),
                    "status": appt.get("status"),
                    "link": link,
                    "request": task_ref,
                    # The viewer's own part (as the consultant, through one of their
                    # PractitionerRoles) still waits for their answer.
                    "mine": any(
                        p.get("status") == "needs-action"
                        and (p.get("actor") or {}).get("reference") in own_roles
                        for p in appt.get("participant", [])
                    ),
                }
            )
        return Page("consults.html", {"consults": rows})

    async def consult_accept(
        self, request: Request, session: sessions.WebSession, form: FormData, appointment_id: str
    ) -> Response:
        def work(s: Session, ctx: Context) -> Version:
            return answer_consult(self.acting(s, ctx), appointment_id)

        await self.run(request, session, Interaction("create", "AppointmentResponse"), work)
        return RedirectResponse("/consults", 303)

    async def consult_opinion(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Page | Response:
        """The specialist writes the opinion, reads it back, and signs it: a DiagnosticReport
        made final, which files it as the consult's output and completes it. The first post
        shows the preview; the confirmed post signs (refused before the consult started)."""
        conclusion = str(form.get("conclusion", "")).strip()
        diagnosis = str(form.get("diagnosis", "")).strip()
        if not conclusion:
            return await self.referral(
                request, session, task_id, error=translator(session.lang)("required")
            )
        given = Diagnosis.from_entry(diagnosis, self.diagnoses) if diagnosis else None
        if form.get("confirm") != "yes":
            # What will be signed, read back before the signature that cannot be undone.
            return Page(
                "opinion_preview.html",
                {
                    "task_id": task_id,
                    "conclusion": conclusion,
                    "diagnosis": diagnosis,
                    "coded": given.code if given else None,
                    "shown": given.display if given else "",
                },
            )

        def work(s: Session, ctx: Context) -> Version:
            return sign_opinion(self.acting(s, ctx), task_id, conclusion, given)

        return await self.act_on_referral(
            request,
            session,
            task_id,
            Interaction("create", "DiagnosticReport"),
            work,
            lambda v: [Touched(f"DiagnosticReport/{v.id}", v.patient_id)],
            lambda _v: f"/referrals/{task_id}",
        )
