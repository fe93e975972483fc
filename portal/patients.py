"""Finding, registering and reading patients."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alliance.codes import (
    RESIDENT_ID,
)
from alliance.directory.commands import NewPatient, PersonName, register_patient
from alliance.errors import AllianceError
from alliance.fhir.types import SearchResult, Version
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from portal.i18n import rule_words, translator
from portal.shell import Page, Shell, correctable, when
from portal.views import (
    field_of,
    patient_view,
    timeline_item,
)

#: Scripts a patient's name may be written in (BCP 47 tags, DOMAIN.md "Names").
SCRIPTS = [
    ("zh-Hans", "汉字"),
    ("kk-Cyrl", "Қазақша (кирилл)"),
    ("kk-Arab", "قازاقشا (ارab)"),
    ("ug-Arab", "ئۇيغۇرچە"),
    ("ug-Latn", "Uyghur (Latin)"),
    ("kk-Latn", "Qazaq (Latin)"),
    ("en-Latn", "Latin"),
]


class PatientPages(Shell):
    # ---- patients -------------------------------------------------------------------------

    async def patients(self, request: Request, session: sessions.WebSession) -> Page:
        q = request.query_params.get("q", "").strip()
        params: list[tuple[str, str]] = [("_count", "20")]
        if q:
            # A whole identity number, a part of one (4 digits or more, anywhere), or a name
            # (any script, parts separated anyhow, or its pinyin).
            compact = q.replace(" ", "").upper()
            if len(compact) == 18 and compact[:17].isdigit():
                params.append(("identifier", f"{RESIDENT_ID}|{compact}"))
            elif len(compact) >= 4 and compact.rstrip("X").isdigit():
                params.append(("identity:contains", compact))
            else:
                params.append(("name", q))
        after = request.query_params.get("_page_after")
        if after:
            params.append(("_page_after", after))

        def work(s: Session, ctx: Context) -> SearchResult:
            return self.store.search(
                "Patient",
                params,
                session=s,
                default_count=20,
                max_count=50,
                visible=ctx.visible,
            )

        result = await self.run(
            request,
            session,
            Interaction("search", query=urlencode(params)),
            work,
            lambda r: [Touched(f"Patient/{v.id}", v.id) for v in r.matches],
        )
        patients = [patient_view(v.resource()) for v in result.matches]
        next_page = None
        if result.next_page:
            next_page = "/patients?" + urlencode({"q": q, result.next_page[0]: result.next_page[1]})
        return Page("patients.html", {"patients": patients, "q": q, "next_page": next_page})

    async def patient_form(self, request: Request, session: sessions.WebSession) -> Page:
        return Page("patient_new.html", {"form": {}, "errors": {}, "scripts": SCRIPTS})

    async def patient_create(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        values = {k: str(v).strip() for k, v in form.items() if isinstance(v, str)}
        errors: dict[str, str] = {}
        t = translator(session.lang)
        for name in ("name", "identity", "birth_date"):
            if not values.get(name):
                errors[name] = t("required")
        if errors:
            return Page(
                "patient_new.html", {"form": values, "errors": errors, "scripts": SCRIPTS}, 422
            )
        names = [PersonName(values["name"], values.get("name_lang", "zh-Hans"))]
        if values.get("other_name"):
            names.append(
                PersonName(values["other_name"], values.get("other_lang", "kk-Cyrl"), "usual")
            )
        new = NewPatient(
            identity_number=values["identity"],
            names=tuple(names),
            gender=values.get("gender", "male"),
            birth_date=values["birth_date"],
            phone=values.get("phone", ""),
        )

        def work(s: Session, ctx: Context) -> Version:
            return register_patient(self.acting(s, ctx), new)

        try:
            created = await self.run(
                request,
                session,
                Interaction("create", "Patient"),
                work,
                lambda v: [Touched(f"Patient/{v.id}", v.id)],
            )
        except AllianceError as exc:
            if not correctable(exc):
                raise
            errors[field_of(exc)] = rule_words(exc, session.lang)
            return Page(
                "patient_new.html",
                {"form": values, "errors": errors, "scripts": SCRIPTS},
                exc.status,
            )
        return RedirectResponse(f"/patients/{created.id}", 303)

    async def patient(
        self, request: Request, session: sessions.WebSession, patient_id: str
    ) -> Page:
        def work(s: Session, ctx: Context) -> dict[str, Any]:
            patient = self.store.read("Patient", patient_id, session=s, visible=ctx.visible)
            timeline: list[dict[str, Any]] = []
            for rtype, date_key in (
                ("ServiceRequest", "authoredOn"),
                ("DocumentReference", "date"),
                ("Task", "authoredOn"),
            ):
                found = self._search(
                    s, ctx, rtype, [("patient", f"Patient/{patient_id}"), ("_count", "100")], 100
                )
                for v in found.matches:
                    res = v.resource()
                    stamp = res.get(date_key) or res["meta"]["lastUpdated"]
                    timeline.append(timeline_item(rtype, res, stamp))
            if "ImagingStudy" in self.store.registry:
                found = self._search(
                    s,
                    ctx,
                    "ImagingStudy",
                    [("patient", f"Patient/{patient_id}"), ("_count", "100")],
                    100,
                )
                for v in found.matches:
                    res = v.resource()
                    timeline.append(
                        timeline_item(
                            "ImagingStudy", res, res.get("started") or res["meta"]["lastUpdated"]
                        )
                    )
            timeline.sort(key=lambda item: item["sort"], reverse=True)
            return {"patient": patient_view(patient.resource()), "timeline": timeline}

        data = await self.run(
            request,
            session,
            Interaction("read", f"Patient/{patient_id}"),
            work,
            lambda _d: [Touched(f"Patient/{patient_id}", patient_id)],
        )
        xinjiang = self.xinjiang(self.claims(session).hospital_id)
        for item in data["timeline"]:
            item["when"] = when(item["sort"], xinjiang)
        return Page("patient.html", data)
