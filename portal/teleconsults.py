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
from alliance.codes import (
    DEPARTMENT,
)
from alliance.errors import AllianceError, Invalid, NotFound, Unauthorized
from alliance.fhir.registry import Operation, OperationResult
from alliance.fhir.types import SearchResult, Version
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from portal.codes import DIAGNOSES
from portal.i18n import translator
from portal.referrals import ReferralPages
from portal.shell import Page
from portal.views import (
    extension,
    local_time,
)
from referral.commands import Diagnosis
from teleconsult.commands import answer_consult, sign_opinion
from teleconsult.presentation import VIRTUAL_SERVICE
from teleconsult.time import BEIJING


class ConsultPages(ReferralPages):
    # ---- teleconsults ---------------------------------------------------------------------------

    def _operation(self, name: str) -> Operation:
        return self.store.registry.get("Appointment").operations[name]

    async def consult_times(
        self, request: Request, session: sessions.WebSession, task_id: str
    ) -> Page:
        """The free times of the specialist asked, inside both sites' working hours ($find),
        each shown as people here read it."""
        days = max(1, min(28, int(request.query_params.get("days", "7") or 7)))

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
            today = clock.now().astimezone(BEIJING).date()
            params: list[dict[str, Any]] = [
                {"name": "referral", "valueReference": {"reference": sr_ref}},
                {"name": "start", "valueDateTime": today.isoformat()},
                {"name": "end", "valueDateTime": (today + timedelta(days=days)).isoformat()},
            ]
            if code:
                params.append({"name": "specialty", "valueString": code})
            result = self._operation("find").run(
                self.acting(s, ctx), {"resourceType": "Parameters", "parameter": params}
            )
            proposals = [e["resource"] for e in result.resource.get("entry", [])]
            return {"task": task, "proposals": proposals[:60]}

        data = await self.run(
            request,
            session,
            Interaction("search", query=f"Appointment/$find for Task/{task_id}"),
            work,
        )
        times = [
            {
                "label": local_time(p) or p.get("start", ""),
                "who": next(
                    (
                        a["actor"].get("display", "")
                        for a in p.get("participant", [])
                        if a.get("actor", {}).get("reference", "").startswith("PractitionerRole/")
                    ),
                    "",
                ),
                "json": json.dumps(p, ensure_ascii=False),
            }
            for p in data["proposals"]
        ]
        return Page("consult_times.html", {"task": data["task"], "times": times, "days": days})

    async def consult_book(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Page | Response:
        try:
            proposal = json.loads(str(form.get("proposal", "")))
        except ValueError:
            raise Invalid("choose one of the times offered") from None

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
            if isinstance(exc, (NotFound, Unauthorized)):
                raise
            page = await self.consult_times(request, session, task_id)
            page.context["error"] = exc.message
            page.status = exc.status
            return page
        return RedirectResponse(f"/referrals/{task_id}", 303)

    async def consults(self, request: Request, session: sessions.WebSession) -> Page:
        """The specialist's consult calendar: booked and running consults, with the video
        link shown to participants."""
        claims = self.claims(session)
        who = f"Practitioner/{claims.practitioner_id}" if claims.practitioner_id else None

        def work(s: Session, ctx: Context) -> SearchResult:
            params = [("status", "booked,arrived,pending"), ("_sort", "date"), ("_count", "100")]
            if who:
                params.append(("practitioner", who))
            return self._search(s, ctx, "Appointment", params, 100, reader=True)

        result = await self.run(
            request,
            session,
            Interaction("search", query="consult calendar"),
            work,
            lambda r: [Touched(f"Appointment/{v.id}", v.patient_id) for v in r.matches],
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
                    # The specialist's part (the consultant, through their PractitionerRole)
                    # still waits for their answer.
                    "mine": any(
                        p.get("status") == "needs-action"
                        and (p.get("actor") or {})
                        .get("reference", "")
                        .startswith("PractitionerRole/")
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
        """The specialist writes the opinion and signs it: a DiagnosticReport made final,
        which files it as the consult's output and completes it."""
        conclusion = str(form.get("conclusion", "")).strip()
        diagnosis = str(form.get("diagnosis", "")).strip()
        if not conclusion:
            return await self.referral(
                request, session, task_id, error=translator(session.lang)("required")
            )
        given = Diagnosis.from_entry(diagnosis, DIAGNOSES) if diagnosis else None

        def work(s: Session, ctx: Context) -> Version:
            return sign_opinion(self.acting(s, ctx), task_id, conclusion, given)

        try:
            await self.run(
                request,
                session,
                Interaction("create", "DiagnosticReport"),
                work,
                lambda v: [Touched(f"DiagnosticReport/{v.id}", v.patient_id)],
            )
        except AllianceError as exc:
            if isinstance(exc, (NotFound, Unauthorized)):
                raise
            return await self.referral(request, session, task_id, error=exc.message)
        return RedirectResponse(f"/referrals/{task_id}", 303)
