"""Referrals: the lists, one referral's page and what its doctors do on it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from alliance.errors import AllianceError, Invalid, NotFound
from alliance.fhir.registry import Resource
from alliance.fhir.types import SearchResult, Version
from alliance.records import keeper_of, reference_id
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from alliance.security.service import person_name
from portal.i18n import rule_words, translator
from portal.shell import Page, Shell, T, correctable, when
from portal.studies import referral_studies
from portal.views import (
    destination,
    doc_view,
    extension,
    local_time,
    patient_view,
    person_line,
)
from referral import commands
from referral.service import carried, category_of
from referral.workflow import SENT_OPEN
from teleconsult.presentation import VIRTUAL_SERVICE

#: FHIR R4 request-priority, most urgent first.
PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
#: How each move is offered: (word, button style); a move not listed resumes from on-hold.
MOVE_LABELS = {
    "accepted": ("accept", ""),
    "rejected": ("decline", "danger"),
    "in-progress": ("start", ""),
    "completed": ("complete", ""),
    "failed": ("fail", "danger"),
    "cancelled": ("cancel", "danger"),
    "on-hold": ("hold", ""),
}


class ReferralPages(Shell):
    # ---- referrals ---------------------------------------------------------------------------

    async def sent(self, request: Request, session: sessions.WebSession) -> Page:
        hospital = self.claims(session).hospital_id
        return await self._task_list(
            request,
            session,
            [("placer", hospital), ("_sort", "-authored-on")],
            translator(session.lang)("sent_referrals"),
        )

    async def worklist(self, request: Request, session: sessions.WebSession) -> Page:
        hospital = self.claims(session).hospital_id
        status = request.query_params.get("status") or ",".join(SENT_OPEN)
        params = [("owner", f"Organization/{hospital}"), ("status", status), ("_sort", "deadline")]
        if request.query_params.get("priority"):
            params.append(("priority", request.query_params["priority"]))
        return await self._task_list(request, session, params, translator(session.lang)("worklist"))

    async def _task_list(
        self,
        request: Request,
        session: sessions.WebSession,
        params: list[tuple[str, str]],
        title: str,
    ) -> Page:
        """Referrals as people read a list: the patient's name, sex and age, the kind, where to,
        the status in words; the most urgent first, then by deadline (overdue marked)."""
        xinjiang = self.xinjiang(self.claims(session).hospital_id)

        def work(s: Session, ctx: Context) -> tuple[SearchResult, dict[str, Resource]]:
            tasks = self._search(
                s,
                ctx,
                "Task",
                [
                    *params,
                    ("_include", "Task:patient"),
                    ("_include", "Task:focus"),
                    ("_count", "100"),
                ],
                100,
            )
            related = {f"{v.resource_type}/{v.id}": v.resource() for v in tasks.included}
            asked = {
                reference_id(p, "Organization")
                for r in related.values()
                if r["resourceType"] == "ServiceRequest"
                for p in r.get("performer") or []
            } - {None}
            if asked:
                orgs = self._search(
                    s,
                    ctx,
                    "Organization",
                    [
                        ("_id", ",".join(sorted(str(o) for o in asked))),
                        ("_include", "Organization:partof"),
                    ],
                    200,
                )
                related |= {
                    f"Organization/{v.id}": v.resource() for v in [*orgs.matches, *orgs.included]
                }
            return tasks, related

        result, related = await self.run(
            request,
            session,
            Interaction("search", query=urlencode(params)),
            work,
            lambda found: [
                Touched(f"Patient/{v.patient_id}", v.patient_id)
                for v in found[0].matches
                if v.patient_id
            ],
        )
        t = translator(session.lang)
        rows = []
        for v in result.matches:
            task = v.resource()
            deadline = ((task.get("restriction") or {}).get("period") or {}).get("end")
            request_resource = related.get(task["focus"]["reference"], {})
            patient = related.get(task["for"]["reference"])
            rows.append(
                {
                    "id": v.id,
                    "status": task["status"],
                    "priority": task.get("priority", "routine"),
                    "patient": person_line(patient, t) if patient else t("not_shared"),
                    "kind": category_of(request_resource) or "",
                    "target": destination(request_resource, related),
                    "deadline": when(deadline, xinjiang),
                    "due": deadline or "9999",
                    "overdue": (task.get("businessStatus") or {}).get("text") == "overdue",
                }
            )
        rows.sort(key=lambda r: (not r["overdue"], PRIORITY_RANK.get(r["priority"], 9), r["due"]))
        return Page("referrals.html", {"referrals": rows, "title": title})

    async def referral(
        self,
        request: Request,
        session: sessions.WebSession,
        task_id: str,
        error: str | None = None,
        error_status: int = 422,
    ) -> Page:
        """One referral: what it asks, what it shares (the triage view before acceptance), its
        messages, appointments and outputs, and what this hospital may do next. With `error`,
        the page says why the last action was refused, answered with the refusal's status."""
        claims = self.claims(session)

        def work(s: Session, ctx: Context) -> dict[str, Any]:
            task_version = self.store.read(
                "Task", task_id, session=s, visible=ctx.visible, actor=ctx.principal
            )
            task = task_version.resource()
            sr_id = task["focus"]["reference"].removeprefix("ServiceRequest/")
            data: dict[str, Any] = {
                "appointments": [],
                "task": task,
                "request_resource": None,
                "documents": [],
                "studies": [],
                "addable": [],
                "outputs": [],
                "messages": [],
            }
            patient_id = task["for"]["reference"].removeprefix("Patient/")
            try:
                data["patient_name"] = " / ".join(
                    patient_view(
                        self.store.read(
                            "Patient", patient_id, session=s, visible=ctx.visible
                        ).resource()
                    )["names"]
                )
            except NotFound:
                data["patient_name"] = "—"
            try:
                sr = self.store.read(
                    "ServiceRequest", sr_id, session=s, visible=ctx.visible
                ).resource()
                data["request_resource"] = sr
                for info in sr.get("supportingInfo") or []:
                    ref = info.get("reference", "")
                    rtype, _, rid = ref.partition("/")
                    try:
                        res = self.store.read(rtype, rid, session=s, visible=ctx.visible).resource()
                    except (NotFound, AllianceError):
                        continue
                    if rtype == "DocumentReference":
                        data["documents"].append(doc_view(res))
                msgs = self._search(
                    s,
                    ctx,
                    "Communication",
                    [("based-on", f"ServiceRequest/{sr_id}"), ("_sort", "sent")],
                    100,
                )
                data["messages"] = [
                    {
                        "when": m.resource().get("sent") or m.resource()["meta"]["lastUpdated"],
                        "who": (m.resource().get("sender") or {}).get("display", ""),
                        "text": " ".join(
                            p.get("contentString", "") for p in m.resource().get("payload") or []
                        ),
                        "added": bool(carried(m.resource())),
                    }
                    for m in msgs.matches
                ]
                data["studies"], data["addable"] = referral_studies(
                    self.store, s, ctx, task, sr, [m.resource() for m in msgs.matches]
                )
            except NotFound:
                pass
            appointments = self._search(
                s,
                ctx,
                "Appointment",
                [("based-on", f"ServiceRequest/{sr_id}"), ("_sort", "date")],
                20,
                reader=True,
            )
            for a in appointments.matches:
                appt = a.resource()
                room = extension(appt, VIRTUAL_SERVICE) or {}
                data["appointments"].append(
                    {
                        "when": local_time(appt) or appt.get("start", ""),
                        "status": appt.get("status"),
                        "link": next(
                            (
                                x.get("valueUrl")
                                for x in room.get("extension", [])
                                if x.get("url") == "address"
                            ),
                            None,
                        ),
                    }
                )
            for out in task.get("output") or []:
                ref = (out.get("valueReference") or {}).get("reference", "")
                if ref.startswith("DocumentReference/"):
                    with contextlib.suppress(NotFound):
                        data["outputs"].append(
                            doc_view(
                                self.store.read(
                                    "DocumentReference",
                                    ref.split("/")[1],
                                    session=s,
                                    visible=ctx.visible,
                                ).resource()
                            )
                        )
            data["moves"] = commands.moves_for(self.acting(s, ctx), task)
            return data

        data = await self.run(
            request,
            session,
            Interaction("read", f"Task/{task_id}"),
            work,
            lambda d: [
                Touched(f"Task/{task_id}", d["task"]["for"]["reference"].removeprefix("Patient/"))
            ],
        )
        task = data["task"]
        owner = task["owner"]["reference"].removeprefix("Organization/")
        placer = keeper_of(task)
        status = task["status"]
        teleconsult = category_of(data["request_resource"] or {}) == "teleconsult"
        actions = [
            {
                "status": move.target,
                "label": MOVE_LABELS.get(move.target, ("resume", ""))[0],
                "style": MOVE_LABELS.get(move.target, ("resume", ""))[1],
                "reason": "reason" in move.needs,
                "opinion": "output" in move.needs,
            }
            for move in data["moves"]
            # A consult is completed by signing its opinion, not by filing a file.
            if not (teleconsult and move.target == "completed")
        ]
        xinjiang = self.xinjiang(claims.hospital_id)
        for m in data["messages"]:
            m["when"] = when(m["when"], xinjiang)
        deadline = ((task.get("restriction") or {}).get("period") or {}).get("end")
        return Page(
            "referral.html",
            {
                **data,
                "actions": actions,
                "error": error,
                "deadline": when(deadline, xinjiang),
                "overdue": (task.get("businessStatus") or {}).get("text") == "overdue",
                "can_message": data["request_resource"] is not None
                and status not in ("rejected", "cancelled"),
                "appointments": data["appointments"],
                "can_book": claims.hospital_id == placer
                and teleconsult
                and status in ("requested", "received", "accepted")
                and not any(
                    a["status"] in ("booked", "arrived", "pending") for a in data["appointments"]
                ),
                "can_sign": claims.hospital_id == owner
                and teleconsult
                and status in ("accepted", "in-progress"),
                # The hospital that took an up-referral sends the patient back down from it.
                "can_send_down": claims.hospital_id == owner
                and status in ("accepted", "in-progress", "completed")
                and category_of(data["request_resource"] or {}) == "up-referral",
            },
            error_status if error else 200,
        )

    async def referral_move(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Page | Response:
        target = str(form.get("status", ""))
        reason = str(form.get("reason", ""))
        opinion = form.get("opinion")
        seen = str(form.get("version", "")) or None

        def work(s: Session, ctx: Context) -> Version:
            acting = self.acting(s, ctx)
            if target != "completed":
                return commands.move_referral(
                    acting, task_id, target, reason=reason, seen_version=seen
                )
            if not isinstance(opinion, UploadFile) or not opinion.filename:
                raise Invalid("attach the opinion (PDF) to complete", rule="opinion-attachment")
            attachment = self.attach(s, ctx, opinion, "会诊意见")
            return commands.complete_with_opinion(acting, task_id, attachment, seen_version=seen)

        return await self.act_on_referral(
            request,
            session,
            task_id,
            Interaction("update", f"Task/{task_id}"),
            work,
            lambda v: [Touched(f"Task/{v.id}", v.patient_id)],
            lambda _v: f"/referrals/{task_id}",
        )

    async def act_on_referral(
        self,
        request: Request,
        session: sessions.WebSession,
        task_id: str,
        interaction: Interaction,
        work: Callable[[Session, Context], T],
        touched: Callable[[T], list[Touched]],
        then: Callable[[T], str],
    ) -> Page | Response:
        """Do something on a referral's page: on success, to the page `then` names; refused
        for a reason the person can correct, the referral's page again saying why (in their
        language, with the refusal's status)."""
        try:
            done = await self.run(request, session, interaction, work, touched)
        except AllianceError as exc:
            if not correctable(exc):
                raise
            return await self.referral(
                request,
                session,
                task_id,
                error=rule_words(exc, session.lang),
                error_status=exc.status,
            )
        return RedirectResponse(then(done), 303)

    async def send_down(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Page | Response:
        """A down-referral from an up-referral this hospital took: the discharge summary, the
        follow-up / rehabilitation plan (one activity per line), back to the sending hospital."""
        summary = form.get("discharge")
        plan_lines = [
            line.strip() for line in str(form.get("plan", "")).splitlines() if line.strip()
        ]
        if not isinstance(summary, UploadFile) or not summary.filename or not plan_lines:
            return await self.referral(
                request, session, task_id, error=translator(session.lang)("down_needs")
            )

        def work(s: Session, ctx: Context) -> str:
            assert isinstance(summary, UploadFile)
            return commands.send_down(
                self.acting(s, ctx),
                task_id,
                discharge_summary=self.attach(s, ctx, summary, "出院小结"),
                plan=plan_lines,
                note=str(form.get("note", "")),
            ).task_id

        return await self.act_on_referral(
            request,
            session,
            task_id,
            Interaction("create", "ServiceRequest"),
            work,
            lambda tid: [Touched(f"Task/{tid}", None)],
            lambda tid: f"/referrals/{tid}",
        )

    @staticmethod
    def _signature(s: Session, ctx: Context, hospital: str) -> str:
        """How the doctors sign on a referral: `姓名 · 医院`."""
        return f"{person_name(s, ctx.principal.subject) or ctx.principal.username} · {hospital}"

    async def add_referral_studies(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Page | Response:
        """Images uploaded after the referral was sent, added to it while it is open
        (referral.commands.add_studies): the referral's grant then covers them."""
        chosen = [v for k, v in form.multi_items() if k == "study" and isinstance(v, str)]
        hospital = self._hospital_name(self.claims(session).hospital_id)

        def work(s: Session, ctx: Context) -> Version:
            signature = self._signature(s, ctx, hospital)
            return commands.add_studies(self.acting(s, ctx), task_id, chosen, signature)

        return await self.act_on_referral(
            request,
            session,
            task_id,
            Interaction("create", "Communication"),
            work,
            lambda v: [Touched(f"Communication/{v.id}", v.patient_id)],
            lambda _v: f"/referrals/{task_id}",
        )

    async def referral_message(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Response:
        text = str(form.get("text", "")).strip()
        hospital = self._hospital_name(self.claims(session).hospital_id)

        def work(s: Session, ctx: Context) -> Version:
            signature = self._signature(s, ctx, hospital)
            return commands.post_message(self.acting(s, ctx), task_id, text, signature)

        if text:
            await self.run(
                request,
                session,
                Interaction("create", "Communication"),
                work,
                lambda v: [Touched(f"Communication/{v.id}", v.patient_id)],
            )
        return RedirectResponse(f"/referrals/{task_id}", 303)
