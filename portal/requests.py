"""The form a county doctor sends a referral or a teleconsult request with."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from alliance.errors import AllianceError
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from portal.i18n import rule_words, translator
from portal.shell import Page, Shell, correctable
from portal.views import (
    FormValues,
    field_of,
    patient_view,
    study_view,
)
from referral import commands
from referral.commands import Consenter, Diagnosis, ReferralRequest


class RequestPages(Shell):
    async def referral_form(self, request: Request, session: sessions.WebSession) -> Page:
        patient_id = request.query_params.get("patient", "")
        return await self._referral_page(request, session, patient_id, {}, {})

    async def teleconsult_form(self, request: Request, session: sessions.WebSession) -> Page:
        """A teleconsult request: the same form as a referral (consent, diagnosis, summary,
        department asked); then the free times of both calendars to book from."""
        patient_id = request.query_params.get("patient", "")
        return await self._referral_page(
            request, session, patient_id, {"category": "teleconsult"}, {}
        )

    async def _referral_page(
        self,
        request: Request,
        session: sessions.WebSession,
        patient_id: str,
        values: dict[str, Any],
        errors: dict[str, str],
        status: int = 200,
    ) -> Page:
        claims = self.claims(session)

        def work(s: Session, ctx: Context) -> dict[str, Any]:
            patient = self.store.read("Patient", patient_id, session=s, visible=ctx.visible)
            orgs = self._search(
                s, ctx, "Organization", [("_count", "200"), ("active", "true")], 200
            )
            hospitals: dict[str, dict[str, Any]] = {}
            departments: list[tuple[str, dict[str, Any]]] = []
            for v in orgs.matches:
                org = v.resource()
                parent = (org.get("partOf") or {}).get("reference", "")
                if parent:
                    departments.append((parent.removeprefix("Organization/"), org))
                elif org["id"] != claims.hospital_id:
                    hospitals[org["id"]] = {"name": org.get("name"), "departments": []}
            for parent, dept in departments:
                if parent in hospitals:
                    hospitals[parent]["departments"].append(
                        {"id": dept["id"], "name": dept.get("name")}
                    )
            studies = []
            if "ImagingStudy" in self.store.registry:
                found = self._search(
                    s, ctx, "ImagingStudy", [("patient", f"Patient/{patient_id}")], 50
                )
                studies = [study_view(v.resource()) for v in found.matches]
            return {
                "patient": patient_view(patient.resource()),
                "hospitals": list(hospitals.values()),
                "studies": studies,
            }

        data = await self.run(
            request,
            session,
            Interaction("read", f"Patient/{patient_id}"),
            work,
            lambda _d: [Touched(f"Patient/{patient_id}", patient_id)],
        )
        return Page(
            "referral_new.html",
            {**data, "form": FormValues(values), "errors": errors},
            status,
        )

    async def referral_create(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        t = translator(session.lang)
        patient_id = str(form.get("patient", ""))
        category = "teleconsult" if form.get("category") == "teleconsult" else "up-referral"
        values: dict[str, Any] = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        values["study"] = [v for k, v in form.multi_items() if k == "study" and isinstance(v, str)]
        # A browser never fills a file input again: a form drawn again after an error names
        # the files chosen, to be chosen again.
        values["files_dropped"] = {
            name: chosen.filename
            for name in ("consent_form", "document")
            if isinstance(chosen := form.get(name), UploadFile) and chosen.filename
        }
        errors: dict[str, str] = {}
        consent_file = form.get("consent_form")
        if not isinstance(consent_file, UploadFile) or not consent_file.filename:
            errors["consent_form"] = t("required")
        for name in ("target", "diagnosis", "summary"):
            if not str(form.get(name, "")).strip():
                errors[name] = t("required")
        consenter = str(form.get("consenter", "patient"))
        if consenter != "patient" and not str(form.get("consenter_name", "")).strip():
            errors["consenter_name"] = t("required")
        if errors:
            return await self._referral_page(request, session, patient_id, values, errors, 422)
        assert isinstance(consent_file, UploadFile)
        document_file = form.get("document")
        asked = str(form.get("priority", "routine"))

        attaching = ""  # the file field being stored, so a file's refusal is shown beside it

        def work(s: Session, ctx: Context) -> str:
            nonlocal attaching
            documents = []
            if isinstance(document_file, UploadFile) and document_file.filename:
                title = document_file.filename or "病历摘要"
                attaching = "document"
                documents.append((title, self.attach(s, ctx, document_file, title)))
            attaching = "consent_form"
            consent = self.attach(s, ctx, consent_file, "知情同意书")
            attaching = ""
            opened = commands.open_referral(
                self.acting(s, ctx),
                ReferralRequest(
                    patient_id=patient_id,
                    department_id=str(form["target"]),
                    category=category,
                    priority=asked,
                    diagnosis=Diagnosis.from_entry(str(form["diagnosis"]), self.diagnoses),
                    summary=str(form["summary"]),
                    consent_form=consent,
                    consenter=Consenter(consenter, str(form.get("consenter_name", ""))),
                    documents=documents,
                    studies=values["study"],
                ),
            )
            return opened.task_id

        try:
            task_id = await self.run(
                request,
                session,
                Interaction("create", "ServiceRequest"),
                work,
                lambda tid: [Touched(f"Task/{tid}", patient_id)],
            )
        except AllianceError as exc:
            if not correctable(exc):
                raise
            where = attaching if attaching and exc.status in (413, 415, 422) else None
            errors[where or field_of(exc, default="form")] = rule_words(exc, session.lang)
            return await self._referral_page(
                request, session, patient_id, values, errors, exc.status
            )
        if category == "teleconsult":
            return RedirectResponse(f"/teleconsults/{task_id}/times", 303)
        return RedirectResponse(f"/referrals/{task_id}", 303)

    async def diagnosis_search(self, request: Request, session: sessions.WebSession) -> Response:
        """The diagnoses matching what is typed (code, any part of the name, or pinyin
        initials), for the request form's suggestions."""
        found = self.diagnoses.search(request.query_params.get("q", ""))
        return JSONResponse([{"code": c, "name": n} for c, n in found])
