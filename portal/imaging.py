"""Uploading DICOM and the viewer's page."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session

from alliance.errors import Forbidden, NotFound
from alliance.fhir.types import Version
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from portal.shell import Page, Shell


class ImagingPages(Shell):
    # ---- imaging ------------------------------------------------------------------------------

    async def upload(self, request: Request, session: sessions.WebSession) -> Page:
        """Upload DICOM files or a folder; the page posts each file to STOW-RS itself."""
        if "clinical" not in self._capabilities(self.claims(session).role):
            raise Forbidden("clinical staff upload imaging")
        return Page("upload.html")

    async def viewer(self, request: Request, session: sessions.WebSession, study_uid: str) -> Page:
        """The viewer reads the study through DICOMweb (with the session), where the access
        rules and the audit apply to every request; this page only checks the study exists
        for this user, so another hospital's study answers the not-found page."""

        def work(s: Session, ctx: Context) -> Version:
            found = self._search(
                s, ctx, "ImagingStudy", [("identifier", f"urn:oid:{study_uid}")], 1
            )
            if not found.matches:
                raise NotFound(f"study {study_uid} is not known")
            return found.matches[0]

        await self.run(
            request,
            session,
            Interaction("read", f"ImagingStudy/{study_uid}"),
            work,
            lambda v: [Touched(f"ImagingStudy/{v.id}", v.patient_id)],
        )
        return Page("viewer.html", {"study_uid": study_uid})
