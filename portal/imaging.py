"""Uploading DICOM and the viewer's page."""

from __future__ import annotations

import contextlib

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydicom.datadict import dictionary_description
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alliance.codes import RESIDENT_ID
from alliance.errors import Forbidden, Invalid, NotFound
from alliance.fhir.registry import Resource
from alliance.fhir.types import Version
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from imaging.held import held_studies, may_reconcile
from portal.i18n import translator
from portal.shell import Page, Shell
from portal.views import patient_view, person_line


class ImagingPages(Shell):
    # ---- imaging ------------------------------------------------------------------------------

    async def upload(self, request: Request, session: sessions.WebSession) -> Page:
        """Upload DICOM files or a folder; the page posts each file to STOW-RS itself."""
        if "clinical" not in self._capabilities(self.claims(session).role):
            raise Forbidden("clinical staff upload imaging", rule="imaging-clinical-staff")
        return Page("upload.html")

    async def viewer(self, request: Request, session: sessions.WebSession, study_uid: str) -> Page:
        """The viewer reads the study through DICOMweb (with the session), where the access
        rules and the audit apply to every request; this page only checks the study exists
        for this user, so another hospital's study answers the not-found page."""

        def work(s: Session, ctx: Context) -> tuple[Version, Resource | None]:
            found = self._search(
                s,
                ctx,
                "ImagingStudy",
                [("identifier", f"urn:oid:{study_uid}"), ("_include", "ImagingStudy:patient")],
                1,
            )
            if not found.matches:
                raise NotFound(f"study {study_uid} is not known")
            patient = next((v.resource() for v in found.included), None)
            return found.matches[0], patient

        study, patient = await self.run(
            request,
            session,
            Interaction("read", f"ImagingStudy/{study_uid}"),
            work,
            lambda found: [Touched(f"ImagingStudy/{found[0].id}", found[0].patient_id)],
        )
        t = translator(session.lang)
        resource = study.resource()
        return Page(
            "viewer.html",
            {
                "study_uid": study_uid,
                # Who and what is on the screen, always in view (a safety banner).
                "banner": {
                    "patient": person_line(patient, t) if patient else t("unlinked_study"),
                    "identity": patient_view(patient)["identity"] if patient else "",
                    "study_date": str(resource.get("started", ""))[:10],
                    "modality": ",".join(m.get("code", "") for m in resource.get("modality") or []),
                    "description": resource.get("description", ""),
                },
            },
        )

    async def held(
        self, request: Request, session: sessions.WebSession, error: str | None = None
    ) -> Page:
        """The hospital's studies that matched no patient, each to link to the right one."""
        found = await self.run(
            request,
            session,
            Interaction("search", query="held studies", type="query"),
            lambda s, ctx: held_studies(s, ctx.principal.hospital_id),
            lambda studies: [Touched(f"ImagingStudy/{h.study_uid}", None) for h in studies],
            check=may_reconcile,
        )
        return Page("held.html", {"studies": found, "error": error}, 422 if error else 200)

    async def held_link(
        self, request: Request, session: sessions.WebSession, form: FormData, study_uid: str
    ) -> Page | Response:
        """Link a held study to the patient named by identity number (or a name that finds
        exactly one of the hospital's patients)."""
        t = translator(session.lang)
        asked = str(form.get("patient", "")).strip()
        compact = asked.replace(" ", "").upper()
        params = (
            [("identifier", f"{RESIDENT_ID}|{compact}")]
            if len(compact) == 18 and compact[:17].isdigit()
            else [("name", asked)]
        )

        def work(s: Session, ctx: Context) -> str:
            found = self._search(
                s,
                ctx,
                "Patient",
                [*params, ("organization", f"Organization/{ctx.principal.hospital_id}")],
                5,
            )
            if len(found.matches) != 1:
                raise Invalid(t("held_link_one").format(n=len(found.matches)))
            patient_id = found.matches[0].id
            self.imaging.link_study(s, study_uid, patient_id, hospital_id=ctx.principal.hospital_id)
            return patient_id

        if not asked:
            return await self.held(request, session, error=t("required"))
        try:
            await self.run(
                request,
                session,
                Interaction("update", f"ImagingStudy/{study_uid}"),
                work,
                lambda pid: [Touched(f"ImagingStudy/{study_uid}", pid)],
                check=may_reconcile,
            )
        except Invalid as exc:
            return await self.held(request, session, error=exc.message)
        return RedirectResponse("/imaging/held", 303)

    async def tag_names(self, request: Request) -> JSONResponse:
        """The standard names of DICOM tags (PS3.6 data dictionary), for the viewer's header
        table: `?tags=00100010,00080020` answers `{"00100010": "Patient's Name", ...}`."""
        asked = request.query_params.get("tags", "").split(",")[:500]
        names = {}
        for tag in asked:
            if len(tag) == 8 and all(c in "0123456789abcdefABCDEF" for c in tag):
                with contextlib.suppress(KeyError):
                    names[tag.upper()] = dictionary_description(int(tag, 16))
        return JSONResponse(names, headers={"Cache-Control": "public, max-age=86400"})
