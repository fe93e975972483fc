"""The portal's pages. Every page runs its work through the Guard with the session's token,
so access rules and the audit trail are exactly those of the API; the portal adds no business
rules of its own (it calls the FHIR store and the domain services)."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from alliance import clock
from alliance.attachments.service import fhir_attachment, store_attachment
from alliance.audit.anchor import TrailResult, verify_trail
from alliance.codes import (
    DEPARTMENT,
    DEPARTMENT_CODES,
    DEPARTMENT_VERSION,
    HL7_ORG_TYPE,
    ICD10_CN,
    LANGUAGE_EXTENSION,
    REQUEST_CATEGORY,
    RESIDENT_ID,
)
from alliance.config import Settings
from alliance.db import Database
from alliance.errors import AllianceError, Forbidden, Invalid, NotFound, Unauthorized
from alliance.fhir.registry import Operation, OperationContext, OperationResult
from alliance.fhir.store import FhirStore
from alliance.fhir.types import SearchResult, Version
from alliance.numbers import whole_number
from alliance.records import keeper_of
from alliance.security import sessions
from alliance.security.access import Principal
from alliance.security.guard import Context, Guard, Interaction, Touched
from alliance.security.login import LoginRefused, log_in, log_out_everywhere
from alliance.security.models import User
from alliance.security.service import (
    create_user,
    manageable_roles,
    principal_for,
    reset_password,
    set_locked,
    set_role,
)
from alliance.security.tokens import TokenClaims, issue_token, verify_token
from alliance.storage import BlobStore
from portal.charts import bar_chart, stacked_months
from portal.codes import COMMON_DIAGNOSES
from portal.i18n import translator
from referral.stats import Period, reason_reader, referral_figures
from teleconsult.presentation import LOCAL_TIME, VIRTUAL_SERVICE

HERE = Path(__file__).parent
T = TypeVar("T")
BEIJING = ZoneInfo("Asia/Shanghai")
XINJIANG = ZoneInfo("Asia/Urumqi")
XINYUAN_HOSPITALS = ("xy-people", "xy-tcm", "xy-mch")
SCRIPTS = [
    ("zh-Hans", "汉字"),
    ("kk-Cyrl", "Қазақша (кирилл)"),
    ("kk-Arab", "قازاقشا (ارab)"),
    ("ug-Arab", "ئۇيغۇرچە"),
    ("ug-Latn", "Uyghur (Latin)"),
    ("kk-Latn", "Qazaq (Latin)"),
    ("en-Latn", "Latin"),
]
LOINC = "http://loinc.org"
OPEN = ("requested", "received", "accepted", "in-progress", "on-hold")


def when(value: str | datetime | None, hospital: str | None = None) -> str:
    """A time as people here read it: Beijing time, with Xinjiang time beside it for users
    at a Xinyuan hospital."""
    if value is None:
        return ""
    instant = (
        datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    )
    if instant.tzinfo is None:
        return instant.isoformat()
    bj = instant.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")
    if hospital in XINYUAN_HOSPITALS:
        return f"{bj} 北京时间 (新疆时间 {instant.astimezone(XINJIANG).strftime('%H:%M')})"
    return f"{bj} 北京时间"


@dataclass
class Page:
    """What a handler hands to a template besides the common parts."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)
    status: int = 200


class Portal:
    def __init__(
        self, settings: Settings, db: Database, guard: Guard, store: FhirStore, blobs: BlobStore
    ) -> None:
        self.settings = settings
        self.db = db
        self.guard = guard
        self.store = store
        self.blobs = blobs
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["when"] = when

    # ---- sessions, rendering, guarded work ---------------------------------------------------

    def session(self, request: Request) -> sessions.WebSession | None:
        return sessions.decode(self.settings, request.cookies.get(sessions.COOKIE))

    def claims(self, session: sessions.WebSession) -> TokenClaims:
        return verify_token(self.settings, session.token)

    def _cookie(self, response: Response, session: sessions.WebSession) -> None:
        response.set_cookie(
            sessions.COOKIE,
            sessions.encode(self.settings, session),
            httponly=True,
            samesite="strict",
            secure=self.settings.base_url.startswith("https://"),
            path="/",
        )

    def render(
        self, request: Request, page: Page, session: sessions.WebSession | None
    ) -> HTMLResponse:
        lang = session.lang if session else request.cookies.get("alliance_lang", "zh")
        user = None
        hospital_name = ""
        if session is not None:
            try:
                claims = self.claims(session)
                user = _UserView(claims, self._capabilities(claims.role))
                hospital_name = self._hospital_name(claims.hospital_id)
            except Unauthorized:
                session = None
        csrf = session.csrf if session else request.cookies.get("alliance_precsrf")
        context = {
            "request": request,
            "t": translator(lang),
            "lang": lang,
            "user": user,
            "csrf": csrf,
            "hospital_name": hospital_name,
            "notice": None,
            **page.context,
        }
        response = self.templates.TemplateResponse(
            request, page.template, context, status_code=page.status
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        if session is not None:
            self._cookie(response, self._fresh(session))
        return response

    def _fresh(self, session: sessions.WebSession) -> sessions.WebSession:
        """Touched now; with a new token when half the old one's life is gone. The new token
        keeps the old one's claims - its account's token epoch too, so a revocation still
        ends it - and never outlives the session's absolute end."""
        claims = self.claims(session)
        if time.time() - claims.issued_at > self.settings.token_lifetime / 2:
            ends = datetime.fromtimestamp(session.ends(self.settings), UTC)
            token, _ = issue_token(self.settings, claims, not_after=ends)
            session = replace(session, token=token)
        return session.touched()

    def _alive(self, session: sessions.WebSession) -> bool:
        """Whether the session's account still holds it (not logged out, reset, locked or
        given another role since): the guard's own check, before any page is drawn."""
        try:
            claims = self.claims(session)
            with self.db.transaction() as s:
                principal_for(s, claims)
        except Unauthorized:
            return False
        return True

    def _capabilities(self, role: str) -> frozenset[str]:
        from alliance.security.models import Role

        with self.db.transaction() as s:
            row = s.get(Role, role)
            return row.capability_set if row else frozenset()

    def _hospital_name(self, hospital_id: str) -> str:
        try:
            with self.db.transaction() as s:
                org = self.store.read("Organization", hospital_id, session=s).resource()
            return str(org.get("name", hospital_id))
        except AllianceError:
            return hospital_id

    async def run(
        self,
        request: Request,
        session: sessions.WebSession,
        interaction: Interaction,
        work: Callable[[Session, Context], T],
        touched: Callable[[T], list[Touched]] | None = None,
        check: Callable[[Principal], None] | None = None,
    ) -> T:
        return await self.guard.run(
            request,
            interaction,
            work,
            touched or (lambda _v: [Touched(interaction.entity, None)]),
            check=check,
            claims=self.claims(session),
        )

    # ---- the router ---------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)
        page = self._page
        r.add_api_route("/", self.home, methods=["GET"])
        r.add_api_route("/login", self.login_form, methods=["GET"])
        r.add_api_route("/login", self.login, methods=["POST"])
        r.add_api_route("/logout", page(self.logout, post=True), methods=["POST"])
        r.add_api_route("/lang/{code}", self.language, methods=["GET"])
        r.add_api_route("/patients", page(self.patients), methods=["GET"])
        r.add_api_route("/patients/new", page(self.patient_form), methods=["GET"])
        r.add_api_route("/patients/new", page(self.patient_create, post=True), methods=["POST"])
        r.add_api_route("/patients/{patient_id}", page(self.patient), methods=["GET"])
        r.add_api_route("/referrals", page(self.sent), methods=["GET"])
        r.add_api_route("/referrals/new", page(self.referral_form), methods=["GET"])
        r.add_api_route("/referrals/new", page(self.referral_create, post=True), methods=["POST"])
        r.add_api_route("/referrals/{task_id}", page(self.referral), methods=["GET"])
        r.add_api_route(
            "/referrals/{task_id}/move", page(self.referral_move, post=True), methods=["POST"]
        )
        r.add_api_route(
            "/referrals/{task_id}/message", page(self.referral_message, post=True), methods=["POST"]
        )
        r.add_api_route(
            "/referrals/{task_id}/down", page(self.send_down, post=True), methods=["POST"]
        )
        r.add_api_route("/teleconsults/new", page(self.teleconsult_form), methods=["GET"])
        r.add_api_route("/teleconsults/{task_id}/times", page(self.consult_times), methods=["GET"])
        r.add_api_route(
            "/teleconsults/{task_id}/book", page(self.consult_book, post=True), methods=["POST"]
        )
        r.add_api_route("/consults", page(self.consults), methods=["GET"])
        r.add_api_route(
            "/consults/{appointment_id}/accept",
            page(self.consult_accept, post=True),
            methods=["POST"],
        )
        r.add_api_route(
            "/referrals/{task_id}/opinion", page(self.consult_opinion, post=True), methods=["POST"]
        )
        r.add_api_route("/worklist", page(self.worklist), methods=["GET"])
        r.add_api_route("/imaging/upload", page(self.upload), methods=["GET"])
        r.add_api_route("/viewer/{study_uid}", page(self.viewer), methods=["GET"])
        r.add_api_route("/audit", page(self.audit), methods=["GET"])
        r.add_api_route("/audit/verify", page(self.audit_verify, post=True), methods=["POST"])
        r.add_api_route("/dashboard", page(self.dashboard), methods=["GET"])
        r.add_api_route("/admin/departments", page(self.departments), methods=["GET"])
        r.add_api_route(
            "/admin/departments", page(self.department_create, post=True), methods=["POST"]
        )
        r.add_api_route(
            "/admin/departments/{dept_id}/{action}",
            page(self.department_action, post=True),
            methods=["POST"],
        )
        r.add_api_route("/admin/calendar", page(self.calendar), methods=["GET"])
        r.add_api_route(
            "/admin/calendar/closures", page(self.closure_add, post=True), methods=["POST"]
        )
        r.add_api_route("/admin/calendar/hours", page(self.hours_save, post=True), methods=["POST"])
        r.add_api_route(
            "/admin/calendar/closures/{index}/remove",
            page(self.closure_remove, post=True),
            methods=["POST"],
        )
        r.add_api_route("/admin/staff", page(self.staff), methods=["GET"])
        r.add_api_route("/admin/staff", page(self.staff_create, post=True), methods=["POST"])
        r.add_api_route(
            "/admin/staff/{username}/{action}", page(self.staff_action, post=True), methods=["POST"]
        )
        return r

    def static(self) -> StaticFiles:
        return StaticFiles(directory=str(HERE / "static"))

    def _page(
        self, handler: Callable[..., Awaitable[Page | Response]], *, post: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler: a session is required (else the login page), a form post must carry
        the session's CSRF token (else 403), and errors become readable pages."""

        async def endpoint(request: Request) -> Response:
            params = dict(request.path_params)
            session = self.session(request)
            if session is None or not await run_in_threadpool(self._alive, session):
                target = quote(
                    request.url.path + (f"?{request.url.query}" if request.url.query else "")
                )
                response = RedirectResponse(f"/login?next={target}", 303)
                if session is not None:
                    response.delete_cookie(sessions.COOKIE, path="/")
                return response
            form: FormData | None = None
            if post:
                form = await request.form()
                if not secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
                    return self.render(
                        request,
                        Page("not_found.html", {"message": "CSRF token missing or wrong"}, 403),
                        session,
                    )
            try:
                result = (
                    await handler(request, session, form, **params)
                    if post
                    else await handler(request, session, **params)
                )
            except Unauthorized:
                return RedirectResponse("/login", 303)
            except (NotFound, Forbidden) as exc:
                status = 404 if isinstance(exc, NotFound) else 403
                return self.render(request, Page("not_found.html", {}, status), session)
            if isinstance(result, Response):
                if not isinstance(result, RedirectResponse) or result.status_code != 303:
                    return result
                self._cookie(result, self._fresh(session))
                return result
            return self.render(request, result, session)

        return endpoint

    # ---- login ----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        try:
            claims = self.claims(session)
        except Unauthorized:
            return RedirectResponse("/login", 303)
        caps = self._capabilities(claims.role)
        if "clinical" in caps:
            return RedirectResponse(
                "/worklist" if claims.role == "specialist" else "/patients", 303
            )
        if "audit" in caps:
            return RedirectResponse("/audit", 303)
        return RedirectResponse("/admin/staff", 303)

    async def login_form(
        self, request: Request, error: str | None = None, retry_after: int | None = None
    ) -> Response:
        # Login CSRF: the form's token must match a cookie only this page sets (double submit).
        token = request.cookies.get("alliance_precsrf") or secrets.token_urlsafe(16)
        page = Page(
            "login.html",
            {"error": error, "next": request.query_params.get("next", "/"), "csrf": token},
            429 if retry_after else 401 if error else 200,
        )
        response = self.render(request, page, None)
        response.set_cookie("alliance_precsrf", token, httponly=True, samesite="strict")
        if retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form()
        precsrf = request.cookies.get("alliance_precsrf", "")
        if not precsrf or not secrets.compare_digest(str(form.get("csrf", "")), precsrf):
            return self.render(request, Page("not_found.html", {"message": "CSRF"}, 403), None)
        lang = request.cookies.get("alliance_lang", "zh")
        try:
            issued = log_in(
                self.db,
                self.settings,
                grant_type="password",
                username=str(form.get("username", "")),
                secret=str(form.get("password", "")),
                address=request.client.host if request.client else None,
                agent=request.headers.get("user-agent"),
            )
        except LoginRefused as refused:
            if refused.retry_after:
                message = translator(lang)("login_throttled").format(seconds=refused.retry_after)
                return await self.login_form(request, message, refused.retry_after)
            return await self.login_form(request, translator(lang)("login_failed"))
        target = str(form.get("next") or "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # never redirect off the site
        response = RedirectResponse(target, 303)
        self._cookie(response, sessions.WebSession.start(issued.token, lang))
        response.delete_cookie("alliance_precsrf")
        return response

    async def logout(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Response:
        """Ends every session and token of the account, not only this browser's cookie."""
        with contextlib.suppress(Unauthorized):  # already ended
            await run_in_threadpool(
                log_out_everywhere,
                self.db,
                self.settings,
                session.token,
                address=request.client.host if request.client else None,
                agent=request.headers.get("user-agent"),
            )
        response = RedirectResponse("/login", 303)
        response.delete_cookie(sessions.COOKIE, path="/")
        return response

    async def language(self, request: Request, code: str) -> Response:
        lang = code if code in ("zh", "en") else "zh"
        back = request.headers.get("referer") or "/"
        response = RedirectResponse(
            back if back.startswith(self.settings.base_url) or back.startswith("/") else "/", 303
        )
        response.set_cookie("alliance_lang", lang, samesite="strict")
        session = self.session(request)
        if session is not None:
            self._cookie(response, replace(session, lang=lang))
        return response

    # ---- patients -------------------------------------------------------------------------

    async def patients(self, request: Request, session: sessions.WebSession) -> Page:
        q = request.query_params.get("q", "").strip()
        params: list[tuple[str, str]] = [("_count", "20")]
        if q:
            compact = q.replace(" ", "").upper()
            if compact[:17].isdigit() and len(compact) >= 6:
                params.append(("identifier", f"{RESIDENT_ID}|{compact}"))
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
        patients = [_patient_view(v.resource()) for v in result.matches]
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
        claims = self.claims(session)
        names = [_name(values["name"], values.get("name_lang", "zh-Hans"), "official")]
        if values.get("other_name"):
            names.append(_name(values["other_name"], values.get("other_lang", "kk-Cyrl"), "usual"))
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "active": True,
            "identifier": [{"system": RESIDENT_ID, "value": values["identity"].upper()}],
            "name": names,
            "gender": values.get("gender", "male"),
            "birthDate": values["birth_date"],
            "managingOrganization": {"reference": f"Organization/{claims.hospital_id}"},
        }
        if values.get("phone"):
            patient["telecom"] = [{"system": "phone", "value": values["phone"]}]

        def work(s: Session, ctx: Context) -> Version:
            return self.store.create(
                "Patient",
                patient,
                session=s,
                visible=ctx.visible,
                authorize=ctx.authorize,
                actor=ctx.principal,
            ).version

        try:
            created = await self.run(
                request,
                session,
                Interaction("create", "Patient"),
                work,
                lambda v: [Touched(f"Patient/{v.id}", v.id)],
            )
        except (Invalid, AllianceError) as exc:
            if isinstance(exc, (NotFound, Forbidden, Unauthorized)):
                raise
            errors[_field_of(exc)] = exc.message
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
                    timeline.append(_timeline_item(rtype, res, stamp))
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
                        _timeline_item(
                            "ImagingStudy", res, res.get("started") or res["meta"]["lastUpdated"]
                        )
                    )
            timeline.sort(key=lambda item: item["sort"], reverse=True)
            return {"patient": _patient_view(patient.resource()), "timeline": timeline}

        data = await self.run(
            request,
            session,
            Interaction("read", f"Patient/{patient_id}"),
            work,
            lambda _d: [Touched(f"Patient/{patient_id}", patient_id)],
        )
        hospital = self.claims(session).hospital_id
        for item in data["timeline"]:
            item["when"] = when(item["sort"], hospital)
        return Page("patient.html", data)

    # ---- referrals ---------------------------------------------------------------------------

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
                studies = [_study_view(v.resource()) for v in found.matches]
            return {
                "patient": _patient_view(patient.resource()),
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
            {**data, "form": _FormValues(values), "errors": errors, "diagnoses": COMMON_DIAGNOSES},
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
        diagnosis = str(form["diagnosis"]).strip()
        code, _, display = diagnosis.partition(" ")
        target_dept = str(form["target"])
        priority = str(form.get("priority", "routine"))
        summary = str(form["summary"]).strip()

        def work(s: Session, ctx: Context) -> str:
            principal = ctx.principal
            dept = self.store.read(
                "Organization", target_dept, session=s, visible=ctx.visible
            ).resource()
            hospital = (
                (dept.get("partOf") or {})
                .get("reference", f"Organization/{target_dept}")
                .removeprefix("Organization/")
            )
            stored = store_attachment(
                session=s,
                blobs=self.blobs,
                stream=consent_file.file,
                content_type=consent_file.content_type or "",
                title="知情同意书",
                principal=principal,
                max_bytes=self.settings.max_attachment_bytes,
            )
            performer: dict[str, Any] = {"reference": f"Patient/{patient_id}"}
            if consenter != "patient":
                performer = {
                    "display": str(form.get("consenter_name", "")),
                    "extension": [
                        {
                            "url": "https://fhir.yzxy-alliance.cn/StructureDefinition/consenter-relationship",
                            "valueCodeableConcept": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                        "code": consenter,
                                    }
                                ]
                            },
                        }
                    ],
                }
            consent = {
                "resourceType": "Consent",
                "status": "active",
                "scope": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy",
                        }
                    ]
                },
                "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
                "patient": {"reference": f"Patient/{patient_id}"},
                "dateTime": clock.now().isoformat(),
                "performer": [performer],
                "sourceAttachment": fhir_attachment(self.settings.base_url, stored),
                "provision": {
                    "type": "permit",
                    "actor": [
                        {
                            "role": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "IRCP",
                                    }
                                ]
                            },
                            "reference": {"reference": f"Organization/{hospital}"},
                        }
                    ],
                    "purpose": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                            "code": "TREAT",
                        }
                    ],
                },
            }
            self._create(s, ctx, consent)
            supporting: list[dict[str, str]] = []
            if isinstance(document_file, UploadFile) and document_file.filename:
                doc = self._file_document(
                    s,
                    ctx,
                    document_file,
                    {"reference": f"Patient/{patient_id}"},
                    "34133-9",
                    document_file.filename or "病历摘要",
                )
                supporting.append({"reference": f"DocumentReference/{doc.id}"})
            supporting += [{"reference": f"ImagingStudy/{sid}"} for sid in values["study"]]
            requester = (
                {"reference": f"Practitioner/{principal.practitioner_id}"}
                if principal.practitioner_id
                else {"display": principal.username}
            )
            sr = self._create(
                s,
                ctx,
                {
                    "resourceType": "ServiceRequest",
                    "status": "draft",
                    "intent": "order",
                    "category": [{"coding": [{"system": REQUEST_CATEGORY, "code": category}]}],
                    "priority": priority,
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "requester": requester,
                    "performer": [{"reference": f"Organization/{target_dept}"}],
                    "reasonCode": [
                        {
                            "coding": [
                                {
                                    "system": ICD10_CN,
                                    "version": "2.0",
                                    "code": code,
                                    "display": display or code,
                                }
                            ]
                        }
                    ],
                    "note": [{"text": summary}],
                    "supportingInfo": supporting,
                },
            )
            task = self._create(
                s,
                ctx,
                {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "priority": priority,
                    "focus": {"reference": f"ServiceRequest/{sr.id}"},
                    "for": {"reference": f"Patient/{patient_id}"},
                    "requester": requester,
                    "owner": {"reference": f"Organization/{hospital}"},
                    "description": f"{display or code}：{summary[:120]}",
                },
            )
            return task.id

        try:
            task_id = await self.run(
                request,
                session,
                Interaction("create", "ServiceRequest"),
                work,
                lambda tid: [Touched(f"Task/{tid}", patient_id)],
            )
        except AllianceError as exc:
            if isinstance(exc, (NotFound, Forbidden, Unauthorized)):
                raise
            errors[_field_of(exc, default="form")] = exc.message
            return await self._referral_page(
                request, session, patient_id, values, errors, exc.status
            )
        if category == "teleconsult":
            return RedirectResponse(f"/teleconsults/{task_id}/times", 303)
        return RedirectResponse(f"/referrals/{task_id}", 303)

    def _file_document(
        self,
        s: Session,
        ctx: Context,
        upload: UploadFile,
        subject: dict[str, Any],
        loinc: str,
        title: str,
    ) -> Version:
        """An uploaded file kept in the blob store and presented as a DocumentReference."""
        stored = store_attachment(
            session=s,
            blobs=self.blobs,
            stream=upload.file,
            content_type=upload.content_type or "",
            title=title,
            principal=ctx.principal,
            max_bytes=self.settings.max_attachment_bytes,
        )
        return self._create(
            s,
            ctx,
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "type": {"coding": [{"system": LOINC, "code": loinc, "display": title}]},
                "subject": subject,
                "date": clock.now().isoformat(),
                "content": [{"attachment": fhir_attachment(self.settings.base_url, stored)}],
            },
        )

    def _search(
        self,
        s: Session,
        ctx: Context,
        resource_type: str,
        params: list[tuple[str, str]],
        count: int,
        reader: bool = False,
    ) -> SearchResult:
        """A search as the caller may see it (`reader`: shown as it is shown to them)."""
        return self.store.search(
            resource_type,
            params,
            session=s,
            default_count=count,
            max_count=count,
            visible=ctx.visible,
            actor=ctx.principal if reader else None,
        )

    def _update(
        self, s: Session, ctx: Context, resource_type: str, resource_id: str, body: dict[str, Any]
    ) -> Version:
        return self.store.update(
            resource_type,
            resource_id,
            body,
            session=s,
            visible=ctx.visible,
            authorize=ctx.authorize,
            actor=ctx.principal,
        ).version

    def _create(self, s: Session, ctx: Context, body: dict[str, Any]) -> Version:
        return self.store.create(
            body["resourceType"],
            body,
            session=s,
            visible=ctx.visible,
            authorize=ctx.authorize,
            actor=ctx.principal,
        ).version

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
        status = request.query_params.get("status") or ",".join(OPEN)
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
        hospital = self.claims(session).hospital_id

        def work(s: Session, ctx: Context) -> SearchResult:
            return self._search(s, ctx, "Task", [*params, ("_count", "100")], 100)

        result = await self.run(
            request,
            session,
            Interaction("search", query=urlencode(params)),
            work,
            lambda r: [
                Touched(f"Patient/{v.patient_id}", v.patient_id) for v in r.matches if v.patient_id
            ],
        )
        rows = []
        for v in result.matches:
            task = v.resource()
            overdue = (task.get("businessStatus") or {}).get("text") == "overdue"
            deadline = ((task.get("restriction") or {}).get("period") or {}).get("end")
            rows.append(
                {
                    "id": v.id,
                    "status": task["status"],
                    "priority": task.get("priority", "routine"),
                    "patient": self._patient_label(task),
                    "description": task.get("description", ""),
                    "deadline": when(deadline, hospital),
                    "overdue": overdue,
                }
            )
        rows.sort(key=lambda r: not r["overdue"])  # overdue first
        return Page("referrals.html", {"referrals": rows, "title": title})

    def _patient_label(self, task: dict[str, Any]) -> str:
        reference: str = (task.get("for") or {}).get("reference", "")
        return reference.removeprefix("Patient/")

    async def referral(
        self, request: Request, session: sessions.WebSession, task_id: str, error: str | None = None
    ) -> Page:
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
                "outputs": [],
                "messages": [],
            }
            patient_id = task["for"]["reference"].removeprefix("Patient/")
            try:
                data["patient_name"] = " / ".join(
                    _patient_view(
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
                        data["documents"].append(_doc_view(res))
                    elif rtype == "ImagingStudy":
                        data["studies"].append(_study_view(res))
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
                    }
                    for m in msgs.matches
                ]
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
                room = _extension(appt, VIRTUAL_SERVICE) or {}
                data["appointments"].append(
                    {
                        "when": _local_time(appt) or appt.get("start", ""),
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
                            _doc_view(
                                self.store.read(
                                    "DocumentReference",
                                    ref.split("/")[1],
                                    session=s,
                                    visible=ctx.visible,
                                ).resource()
                            )
                        )
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
        actions = []
        status = task["status"]
        teleconsult = _category(data["request_resource"]) == "teleconsult"
        if claims.hospital_id == owner:
            if status in ("requested", "received"):
                actions += [
                    {"status": "accepted", "label": "accept", "style": ""},
                    {"status": "rejected", "label": "decline", "reason": True, "style": "danger"},
                ]
            elif status == "accepted":
                actions.append({"status": "in-progress", "label": "start", "style": ""})
            elif status == "in-progress" and not teleconsult:
                actions.append(
                    {"status": "completed", "label": "complete", "opinion": True, "style": ""}
                )
        if claims.hospital_id == placer and status in ("draft", *OPEN):
            actions.append(
                {"status": "cancelled", "label": "cancel", "reason": True, "style": "danger"}
            )
        for m in data["messages"]:
            m["when"] = when(m["when"], claims.hospital_id)
        deadline = ((task.get("restriction") or {}).get("period") or {}).get("end")
        return Page(
            "referral.html",
            {
                **data,
                "actions": actions,
                "error": error,
                "deadline": when(deadline, claims.hospital_id),
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
                and _category(data["request_resource"]) == "up-referral",
            },
            422 if error else 200,
        )

    async def referral_move(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Page | Response:
        target = str(form.get("status", ""))
        reason = str(form.get("reason", "")).strip()
        opinion = form.get("opinion")
        version = str(form.get("version", ""))

        def work(s: Session, ctx: Context) -> Version:
            current = self.store.read("Task", task_id, session=s, visible=ctx.visible)
            task = current.resource()
            if version and version != str(current.version):
                from alliance.errors import Conflict

                raise Conflict("the referral changed while you were looking at it; see it again")
            task["status"] = target
            if reason:
                task["statusReason"] = {"text": reason}
            if target == "completed":
                if not isinstance(opinion, UploadFile) or not opinion.filename:
                    raise Invalid("attach the opinion (PDF) to complete")
                doc = self._file_document(s, ctx, opinion, task["for"], "11488-4", "会诊意见")
                task["output"] = [
                    *task.get("output", []),
                    {
                        "type": {"text": "opinion"},
                        "valueReference": {"reference": f"DocumentReference/{doc.id}"},
                    },
                ]
            return self._update(s, ctx, "Task", task_id, task)

        try:
            await self.run(
                request,
                session,
                Interaction("update", f"Task/{task_id}"),
                work,
                lambda v: [Touched(f"Task/{v.id}", v.patient_id)],
            )
        except AllianceError as exc:
            if isinstance(exc, (NotFound, Unauthorized)):
                raise
            return await self.referral(request, session, task_id, error=exc.message)
        return RedirectResponse(f"/referrals/{task_id}", 303)

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
            up_task = self.store.read("Task", task_id, session=s, visible=ctx.visible).resource()
            up = self.store.read(
                "ServiceRequest",
                up_task["focus"]["reference"].removeprefix("ServiceRequest/"),
                session=s,
                visible=ctx.visible,
            ).resource()
            home = f"Organization/{keeper_of(up)}"
            doc = self._file_document(s, ctx, summary, up["subject"], "18842-5", "出院小结")
            plan = self._create(
                s,
                ctx,
                {
                    "resourceType": "CarePlan",
                    "status": "active",
                    "intent": "plan",
                    "subject": up["subject"],
                    "title": "康复及随访计划",
                    "activity": [
                        {"detail": {"status": "scheduled", "description": line}}
                        for line in plan_lines
                    ],
                },
            )
            principal = ctx.principal
            requester = (
                {"reference": f"Practitioner/{principal.practitioner_id}"}
                if principal.practitioner_id
                else {"display": principal.username}
            )
            down = self._create(
                s,
                ctx,
                {
                    "resourceType": "ServiceRequest",
                    "status": "draft",
                    "intent": "order",
                    "category": [
                        {"coding": [{"system": REQUEST_CATEGORY, "code": "down-referral"}]}
                    ],
                    "priority": "routine",
                    "subject": up["subject"],
                    "requester": requester,
                    "basedOn": [{"reference": f"ServiceRequest/{up['id']}"}],
                    "performer": [{"reference": home}],
                    "reasonCode": up.get("reasonCode", []),
                    "note": [{"text": str(form.get("note", "")).strip() or "下转康复"}],
                    "supportingInfo": [
                        {"reference": f"DocumentReference/{doc.id}"},
                        {"reference": f"CarePlan/{plan.id}"},
                    ],
                },
            )
            task = self._create(
                s,
                ctx,
                {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "priority": "routine",
                    "focus": {"reference": f"ServiceRequest/{down.id}"},
                    "for": up["subject"],
                    "requester": requester,
                    "owner": {"reference": home},
                    "description": "下转：" + (plan_lines[0][:100]),
                },
            )
            return task.id

        try:
            new_task = await self.run(
                request,
                session,
                Interaction("create", "ServiceRequest"),
                work,
                lambda tid: [Touched(f"Task/{tid}", None)],
            )
        except AllianceError as exc:
            if isinstance(exc, (NotFound, Unauthorized)):
                raise
            return await self.referral(request, session, task_id, error=exc.message)
        return RedirectResponse(f"/referrals/{new_task}", 303)

    async def referral_message(
        self, request: Request, session: sessions.WebSession, form: FormData, task_id: str
    ) -> Response:
        text = str(form.get("text", "")).strip()

        def work(s: Session, ctx: Context) -> Version:
            task = self.store.read("Task", task_id, session=s, visible=ctx.visible).resource()
            return self._create(
                s,
                ctx,
                {
                    "resourceType": "Communication",
                    "status": "completed",
                    "basedOn": [task["focus"]],
                    "subject": task["for"],
                    "sent": clock.now().isoformat(),
                    "sender": {"display": ctx.principal.username},
                    "payload": [{"contentString": text}],
                },
            )

        if text:
            await self.run(
                request,
                session,
                Interaction("create", "Communication"),
                work,
                lambda v: [Touched(f"Communication/{v.id}", v.patient_id)],
            )
        return RedirectResponse(f"/referrals/{task_id}", 303)

    # ---- teleconsults ---------------------------------------------------------------------------

    def _operation(self, name: str) -> Operation:
        return self.store.registry.get("Appointment").operations[name]

    def _op_context(self, s: Session, ctx: Context) -> OperationContext:
        return OperationContext(s, self.store, ctx.principal, ctx.visible, ctx.authorize)

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
                self._op_context(s, ctx), {"resourceType": "Parameters", "parameter": params}
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
                "label": _local_time(p) or p.get("start", ""),
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
                self._op_context(s, ctx),
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
            room = _extension(appt, VIRTUAL_SERVICE)
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
                    "when": _local_time(appt) or appt.get("start", ""),
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
        claims = self.claims(session)

        def work(s: Session, ctx: Context) -> Version:
            roles = self._search(
                s,
                ctx,
                "PractitionerRole",
                [("practitioner", f"Practitioner/{claims.practitioner_id}")],
                5,
            )
            if not roles.matches:
                raise Forbidden("only the specialist answers a consult")
            return self._create(
                s,
                ctx,
                {
                    "resourceType": "AppointmentResponse",
                    "appointment": {"reference": f"Appointment/{appointment_id}"},
                    "actor": {"reference": f"PractitionerRole/{roles.matches[0].id}"},
                    "participantStatus": "accepted",
                },
            )

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
        code, _, display = diagnosis.partition(" ")

        def work(s: Session, ctx: Context) -> Version:
            task = self.store.read("Task", task_id, session=s, visible=ctx.visible).resource()
            report: dict[str, Any] = {
                "resourceType": "DiagnosticReport",
                "status": "preliminary",
                "code": {"coding": [{"system": LOINC, "code": "11488-4", "display": "会诊意见"}]},
                "subject": task["for"],
                "basedOn": [task["focus"]],
                "conclusion": conclusion,
            }
            if code:
                report["conclusionCode"] = [
                    {
                        "coding": [
                            {
                                "system": ICD10_CN,
                                "version": "2.0",
                                "code": code,
                                "display": display or code,
                            }
                        ]
                    }
                ]
            draft = self._create(s, ctx, report)
            signed = {**draft.resource(), "status": "final"}
            return self._update(s, ctx, "DiagnosticReport", draft.id, signed)

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

    # ---- auditors ---------------------------------------------------------------------------

    async def audit(
        self, request: Request, session: sessions.WebSession, verified: TrailResult | None = None
    ) -> Page:
        q = {k: v for k, v in request.query_params.items() if v}
        params = [
            (k, v)
            for k, v in q.items()
            if k in ("altid", "hospital", "patient", "subtype", "outcome", "_page_offset")
        ]
        if q.get("from"):
            params.append(("date", f"ge{q['from']}"))
        if q.get("to"):
            params.append(("date", f"le{q['to']}"))

        def work(s: Session, ctx: Context) -> SearchResult:
            return self._search(s, ctx, "AuditEvent", [*params, ("_count", "50")], 50)

        result = await self.run(
            request,
            session,
            Interaction("search", query=urlencode(params)),
            work,
            check=_auditors_only,
        )
        hospital = self.claims(session).hospital_id
        events = []
        for v in result.matches:
            e = v.resource()
            agent = e["agent"][0]
            events.append(
                {
                    "when": when(e["recorded"], hospital),
                    "username": (agent.get("who") or {}).get("identifier", {}).get("value"),
                    "hospital_id": next(
                        (
                            x["valueReference"]["reference"].removeprefix("Organization/")
                            for x in agent.get("extension", [])
                        ),
                        "",
                    ),
                    "subtype": e["subtype"][0]["code"],
                    "outcome": e["outcome"],
                    "entity": next(
                        (
                            x["what"]["reference"]
                            for x in e.get("entity", [])
                            if "reference" in x.get("what", {}) and x["role"]["code"] != "1"
                        ),
                        "",
                    ),
                    "patient_id": next(
                        (
                            x["what"]["reference"].removeprefix("Patient/")
                            for x in e.get("entity", [])
                            if "reference" in x.get("what", {}) and x["role"]["code"] == "1"
                        ),
                        "",
                    ),
                }
            )
        next_page = None
        if result.next_page:
            next_page = "/audit?" + urlencode(
                {
                    **{k: v for k, v in q.items() if k != "_page_offset"},
                    "_page_offset": result.next_page[1],
                }
            )
        return Page(
            "audit.html",
            {
                "events": events,
                "q": q,
                "next_page": next_page,
                "verify": verified,
                "csv_link": "/api/audit/events.csv?"
                + urlencode([p for p in params if p[0] != "_page_offset"]),
            },
        )

    async def audit_verify(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page:
        check = _auditors_only
        result = await self.run(
            request,
            session,
            Interaction("audit-verify", type="security"),
            lambda s, _ctx: verify_trail(s, self.blobs),
            check=check,
        )
        return await self.audit(request, session, verified=result)

    async def dashboard(self, request: Request, session: sessions.WebSession) -> Page:
        today = clock.now().date()
        first = today.replace(year=today.year - 1)
        period = Period.of_days(first, today)

        def check(principal: Principal) -> None:
            if not principal.capabilities & {"audit", "administer"}:
                raise Forbidden("auditors and administrators only")

        def work(s: Session, ctx: Context) -> dict[str, Any]:
            figures = referral_figures(s, period, reader_hospital=reason_reader(ctx.principal))
            names = {}
            orgs = self._search(s, ctx, "Organization", [("_count", "200")], 200)
            for v in orgs.matches:
                names[v.id] = v.resource().get("name", v.id)
            return {"figures": figures, "names": names}

        data = await self.run(
            request,
            session,
            Interaction("search", query="dashboard", type="query"),
            work,
            check=check,
        )
        t = translator(session.lang)
        figures = data["figures"]
        data["month_chart"] = stacked_months(figures["pairs"], {"up": t("up"), "down": t("down")})
        data["reasons_chart"] = bar_chart(
            [(r["display"], r["count"]) for r in figures["rejection_reasons"]]
        )
        return Page("dashboard.html", data)

    # ---- administrators ------------------------------------------------------------------------

    async def departments(
        self, request: Request, session: sessions.WebSession, error: str | None = None
    ) -> Page:
        hospital = self.claims(session).hospital_id

        def work(s: Session, ctx: Context) -> list[dict[str, Any]]:
            found = self._search(
                s,
                ctx,
                "Organization",
                [("partof", f"Organization/{hospital}"), ("_count", "200")],
                200,
            )
            rows = []
            for v in found.matches:
                org = v.resource()
                coding: dict[str, Any] = next(
                    (
                        c
                        for t in org.get("type") or []
                        for c in t.get("coding") or []
                        if c.get("system") == DEPARTMENT
                    ),
                    {},
                )
                rows.append(
                    {
                        "id": v.id,
                        "name": org.get("name"),
                        "active": org.get("active", True),
                        "code": coding.get("code", ""),
                        "display": coding.get("display", ""),
                    }
                )
            return rows

        rows = await self.run(
            request,
            session,
            Interaction("search", query="departments"),
            work,
            check=self._admins_only,
        )
        codes = sorted(DEPARTMENT_CODES.items())
        return Page(
            "departments.html",
            {
                "departments": rows,
                "codes": codes,
                "error": error,
                "hospital_name": self._hospital_name(hospital),
            },
            422 if error else 200,
        )

    async def department_create(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        hospital = self.claims(session).hospital_id
        name = str(form.get("name", "")).strip()
        code, _, display = str(form.get("code", "")).partition("|")
        if not name or not code:
            return await self.departments(
                request, session, error=translator(session.lang)("required")
            )
        body = {
            "resourceType": "Organization",
            "active": True,
            "name": name,
            "type": [
                {
                    "coding": [
                        {"system": HL7_ORG_TYPE, "code": "dept", "display": "Hospital Department"}
                    ]
                },
                {
                    "coding": [
                        {
                            "system": DEPARTMENT,
                            "version": DEPARTMENT_VERSION,
                            "code": code,
                            "display": display,
                        }
                    ]
                },
            ],
            "partOf": {"reference": f"Organization/{hospital}"},
        }
        try:
            await self.run(
                request,
                session,
                Interaction("create", "Organization"),
                lambda s, ctx: self._create(s, ctx, body),
                check=self._admins_only,
            )
        except AllianceError as exc:
            if isinstance(exc, (NotFound, Forbidden, Unauthorized)):
                raise
            return await self.departments(request, session, error=exc.message)
        return RedirectResponse("/admin/departments", 303)

    async def department_action(
        self,
        request: Request,
        session: sessions.WebSession,
        form: FormData,
        dept_id: str,
        action: str,
    ) -> Response:
        if action not in ("close", "open"):
            raise NotFound(action)

        def work(s: Session, ctx: Context) -> Version:
            org = self.store.read(
                "Organization", dept_id, session=s, visible=ctx.visible
            ).resource()
            org["active"] = action == "open"
            return self._update(s, ctx, "Organization", dept_id, org)

        await self.run(
            request,
            session,
            Interaction("update", f"Organization/{dept_id}"),
            work,
            check=self._admins_only,
        )
        return RedirectResponse("/admin/departments", 303)

    def _calendar(self, s: Session, ctx: Context, hospital: str) -> Version | None:
        found = self._search(
            s, ctx, "HealthcareService", [("organization", f"Organization/{hospital}")], 1
        )
        return found.matches[0] if found.matches else None

    async def calendar(
        self, request: Request, session: sessions.WebSession, error: str | None = None
    ) -> Page:
        """The hospital's consult calendar: its weekly hours (in the zone it keeps) and its
        closures, which the teleconsult booking respects."""
        hospital = self.claims(session).hospital_id

        def work(s: Session, ctx: Context) -> dict[str, Any] | None:
            found = self._calendar(s, ctx, hospital)
            return found.resource() if found else None

        service = await self.run(
            request,
            session,
            Interaction("read", "HealthcareService"),
            work,
            check=self._admins_only,
        )
        zone = next(
            (
                e.get("valueCode")
                for e in (service or {}).get("extension", [])
                if e.get("url", "").endswith("working-time-zone")
            ),
            "Asia/Shanghai",
        )
        return Page(
            "calendar.html",
            {
                "service": service,
                "zone": zone,
                "error": error,
                "hospital_name": self._hospital_name(hospital),
            },
            422 if error else 200,
        )

    async def _change_calendar(
        self,
        request: Request,
        session: sessions.WebSession,
        change: Callable[[dict[str, Any]], None],
    ) -> Page | Response:
        hospital = self.claims(session).hospital_id

        def work(s: Session, ctx: Context) -> Version:
            found = self._calendar(s, ctx, hospital)
            if found is None:
                raise NotFound("this hospital has no consult calendar")
            service = found.resource()
            change(service)
            return self._update(s, ctx, "HealthcareService", found.id, service)

        try:
            await self.run(
                request,
                session,
                Interaction("update", "HealthcareService"),
                work,
                check=self._admins_only,
            )
        except AllianceError as exc:
            if isinstance(exc, (Forbidden, Unauthorized)):
                raise
            return await self.calendar(request, session, error=exc.message)
        return RedirectResponse("/admin/calendar", 303)

    async def closure_add(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        start, end = str(form.get("start", "")), str(form.get("end", ""))
        description = str(form.get("description", "")).strip()
        if not start or not end or not description:
            return await self.calendar(request, session, error=translator(session.lang)("required"))

        def add(service: dict[str, Any]) -> None:
            closures = service.setdefault("notAvailable", [])
            closures.append({"description": description, "during": {"start": start, "end": end}})

        return await self._change_calendar(request, session, add)

    async def hours_save(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        """Weekly hours, one span per line: `mon tue wed thu fri 08:00-12:00`. The calendar's
        own checks (teleconsult rules) refuse what does not make sense."""
        spans = []
        for line in str(form.get("hours", "")).splitlines():
            parts = line.split()
            if not parts:
                continue
            times = parts[-1].split("-")
            if len(times) != 2 or len(parts) < 2:
                return await self.calendar(
                    request, session, error=f"{line}: {translator(session.lang)('hours_hint')}"
                )
            spans.append(
                {
                    "daysOfWeek": parts[:-1],
                    "availableStartTime": f"{times[0]}:00",
                    "availableEndTime": f"{times[1]}:00",
                }
            )

        def replace(service: dict[str, Any]) -> None:
            service["availableTime"] = spans

        return await self._change_calendar(request, session, replace)

    async def closure_remove(
        self, request: Request, session: sessions.WebSession, form: FormData, index: str
    ) -> Page | Response:
        def remove(service: dict[str, Any]) -> None:
            closures = service.get("notAvailable") or []
            position = whole_number(index)
            if position is None or position >= len(closures):
                raise NotFound("no such closure")
            closures.pop(position)
            if not closures:
                service.pop("notAvailable", None)

        return await self._change_calendar(request, session, remove)

    def _admins_only(self, principal: Principal) -> None:
        if "administer" not in principal.capabilities:
            raise Forbidden("hospital administrators only")

    async def staff(
        self,
        request: Request,
        session: sessions.WebSession,
        new_password: str | None = None,
        error: str | None = None,
        values: dict[str, str] | None = None,
    ) -> Page:
        hospital = self.claims(session).hospital_id

        def work(s: Session, _ctx: Context) -> list[dict[str, Any]]:
            users = s.scalars(
                select(User).where(User.hospital_id == hospital).order_by(User.username)
            )
            return [
                {
                    "username": u.username,
                    "display_name": u.display_name,
                    "role_name": u.role_name,
                    "active": u.active,
                }
                for u in users
            ]

        def listed(s: Session, ctx: Context) -> tuple[list[dict[str, Any]], list[str]]:
            return work(s, ctx), manageable_roles(s, ctx.principal)

        users, roles = await self.run(
            request, session, Interaction("search", query="staff"), listed, check=self._admins_only
        )
        return Page(
            "staff.html",
            {
                "users": users,
                "roles": roles,
                "new_password": new_password,
                "error": error,
                "form": values or {},
                "hospital_name": self._hospital_name(hospital),
            },
            422 if error else 200,
        )

    async def staff_create(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        hospital = self.claims(session).hospital_id
        values = {k: str(v).strip() for k, v in form.items() if isinstance(v, str)}
        role = values.get("role", "county-doctor")

        def work(s: Session, ctx: Context) -> str:
            create_user(
                session=s,
                by=ctx.principal,
                username=values.get("username", ""),
                hospital_id=hospital,
                role=role,
                password=None,
                display_name=values.get("display_name") or None,
            )
            return reset_password(session=s, by=ctx.principal, username=values.get("username", ""))

        try:
            password = await self.run(
                request,
                session,
                Interaction("create", f"User/{values.get('username')}", type="security"),
                work,
                check=self._admins_only,
            )
        except AllianceError as exc:
            if isinstance(exc, (Forbidden, Unauthorized)):
                raise
            return await self.staff(request, session, error=exc.message, values=values)
        return await self.staff(request, session, new_password=password)

    async def staff_action(
        self,
        request: Request,
        session: sessions.WebSession,
        form: FormData,
        username: str,
        action: str,
    ) -> Page | Response:
        new_role = str(form.get("role", "")) if form is not None else ""

        def work(s: Session, ctx: Context) -> str | None:
            # Which accounts an administrator manages is the service's rule (check_manage).
            if action in ("lock", "unlock"):
                set_locked(session=s, by=ctx.principal, username=username, locked=action == "lock")
                return None
            if action == "reset":
                return reset_password(session=s, by=ctx.principal, username=username)
            if action == "role":
                set_role(session=s, by=ctx.principal, username=username, role=new_role)
                return None
            raise NotFound(action)

        result = await self.run(
            request,
            session,
            Interaction("update", f"User/{username}", type="security"),
            work,
            check=self._admins_only,
        )
        if result:
            return await self.staff(request, session, new_password=result)
        return RedirectResponse("/admin/staff", 303)


# ---- views ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _UserView:
    claims: TokenClaims
    capabilities: frozenset[str]

    @property
    def username(self) -> str:
        return self.claims.username


class _FormValues(dict[str, Any]):
    def getlist(self, key: str) -> list[str]:
        value = self.get(key) or []
        return value if isinstance(value, list) else [value]


def _extension(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in resource.get("extension") or [] if e.get("url") == url), None)


def _local_time(resource: dict[str, Any]) -> str | None:
    found = _extension(resource, LOCAL_TIME)
    return str(found["valueString"]) if found and "valueString" in found else None


def _category(request: dict[str, Any] | None) -> str | None:
    for concept in (request or {}).get("category") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") == REQUEST_CATEGORY:
                return str(coding.get("code"))
    return None


def _auditors_only(principal: Principal) -> None:
    if "audit" not in principal.capabilities:
        raise Forbidden("the audit trail is for alliance auditors")


def _name(text: str, lang: str, use: str) -> dict[str, Any]:
    return {"extension": [{"url": LANGUAGE_EXTENSION, "valueCode": lang}], "use": use, "text": text}


def _patient_view(patient: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": patient["id"],
        "names": [n.get("text", "") for n in patient.get("name") or []],
        "identity": next(
            (
                i.get("value")
                for i in patient.get("identifier") or []
                if i.get("system") == RESIDENT_ID
            ),
            "",
        ),
        "gender": patient.get("gender"),
        "birth_date": patient.get("birthDate", ""),
    }


def _doc_view(doc: dict[str, Any]) -> dict[str, str | None]:
    attachment = (doc.get("content") or [{}])[0].get("attachment", {})
    title = (
        attachment.get("title")
        or ((doc.get("type") or {}).get("coding") or [{}])[0].get("display")
        or doc["id"]
    )
    # A triage preview (before acceptance) carries no file: the title only, no link.
    return {"url": attachment.get("url"), "title": title}


def _study_view(study: dict[str, Any]) -> dict[str, str | None]:
    uid = next(
        (i.get("value", "").removeprefix("urn:oid:") for i in study.get("identifier") or []), ""
    )
    modalities = ",".join(m.get("code", "") for m in study.get("modality") or [])
    text = f"{study.get('started', '')[:10]} {modalities} {study.get('description', '')}".strip()
    tags = [t.get("code") for t in (study.get("meta") or {}).get("tag") or []]
    # A triage preview (before acceptance) shows what the study is, not its images.
    link = None if "SUBSETTED" in tags else f"/viewer/{uid}"
    return {"id": study["id"], "text": text or uid, "link": link, "uid": uid}


def _timeline_item(rtype: str, res: dict[str, Any], stamp: str) -> dict[str, Any]:
    if rtype == "ServiceRequest":
        code = ((res.get("category") or [{}])[0].get("coding") or [{}])[0].get("code", "")
        reasons = ", ".join(
            c.get("display", c.get("code", ""))
            for r in res.get("reasonCode") or []
            for c in r.get("coding") or []
        )
        return {
            "sort": stamp,
            "kind": code,
            "text": f"{reasons} · {res.get('status')}",
            "link": None,
        }
    if rtype == "Task":
        return {
            "sort": stamp,
            "kind": "Task",
            "text": f"{res.get('description', '')} · {res.get('status')}",
            "link": f"/referrals/{res['id']}",
        }
    if rtype == "ImagingStudy":
        view = _study_view(res)
        return {"sort": stamp, "kind": "影像", "text": view["text"], "link": view["link"]}
    view = _doc_view(res)
    return {"sort": stamp, "kind": "文档", "text": view["title"], "link": view["url"]}


def _field_of(exc: AllianceError, default: str = "form") -> str:
    """The form field an error is about, from its FHIR element path."""
    paths = " ".join(p for i in exc.issues for p in i.expression)
    for marker, name in (
        ("identifier", "identity"),
        ("birthDate", "birth_date"),
        ("name", "name"),
        ("telecom", "phone"),
        ("gender", "gender"),
        ("performer", "target"),
        ("reasonCode", "diagnosis"),
        ("sourceAttachment", "consent_form"),
        ("Consent", "consent_form"),
    ):
        if marker in paths:
            return name
    if "attach" in exc.message or exc.status in (413, 415):
        return "document"
    return default
