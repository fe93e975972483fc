"""The portal's shell: sessions, rendering, error pages and the guarded unit of work every
page runs its work in."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from alliance.attachments.service import fhir_attachment, store_attachment
from alliance.config import Settings
from alliance.db import Database
from alliance.errors import AllianceError, Forbidden, NotFound, Unauthorized
from alliance.fhir.registry import OperationContext, Resource
from alliance.fhir.store import FhirStore
from alliance.fhir.types import SearchResult
from alliance.notify.people import unread as notices_unread
from alliance.security import sessions
from alliance.security.access import Principal
from alliance.security.guard import Context, Guard, Interaction, Touched
from alliance.security.service import (
    principal_for,
)
from alliance.security.tokens import TokenClaims, issue_token, verify_token
from alliance.storage import BlobStore
from imaging.service import Imaging
from portal.i18n import role_label, rule_words, translator
from portal.views import (
    UserView,
)
from referral.diagnoses import DiagnosisList
from teleconsult.presentation import reader_in_xinjiang
from teleconsult.time import format_for_site

HERE = Path(__file__).parent
T = TypeVar("T")


def when(value: str | datetime | None, xinjiang: bool) -> str:
    """A time as people here read it (teleconsult.time.format_for_site: Beijing time, with
    Xinjiang time beside it for users at a Xinjiang site); "" for none."""
    if value is None or value == "":
        return ""
    moment = value if isinstance(value, datetime) else instant_of(value)
    if moment is None or moment.tzinfo is None:
        return str(value)
    return format_for_site(moment, xinjiang=xinjiang)


def instant_of(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class Page:
    """What a handler hands to a template besides the common parts."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)
    status: int = 200


def correctable(error: AllianceError) -> bool:
    """Whether a refusal is one the person at the page can do something about, said on the
    page they came from: a rule they broke (any refusal naming its rule), or what they sent
    (400, 409, 412, 413, 415, 422). Not the session ending (401), nothing there (404), a
    refusal that names no rule (403) or a service down (503): those go to the error pages."""
    return error.rule is not None or error.status in (400, 409, 412, 413, 415, 422)


class Shell:
    """What every page shares: the session cookie, rendering, and running work through the
    Guard with the session's token, so access rules and the audit are exactly the API's."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        guard: Guard,
        store: FhirStore,
        blobs: BlobStore,
        imaging: Imaging,
    ) -> None:
        self.settings = settings
        self.db = db
        self.guard = guard
        self.store = store
        self.blobs = blobs
        self.imaging = imaging
        #: The diagnoses doctors pick from (referral.diagnoses), read once.
        self.diagnoses = DiagnosisList.load(
            Path(settings.icd10_file) if settings.icd10_file else None
        )
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

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
        unread, through = 0, 0
        if session is not None:
            try:
                claims = self.claims(session)
                user = UserView(claims, self._capabilities(claims.role))
                hospital_name = self._hospital_name(claims.hospital_id)
                unread, through = self._notices_unread(claims)
            except Unauthorized:
                session = None
        csrf = session.csrf if session else request.cookies.get("alliance_precsrf")
        context = {
            "request": request,
            "t": translator(lang),
            "role_label": partial(role_label, translator(lang)),
            "lang": lang,
            "user": user,
            "csrf": csrf,
            "hospital_name": hospital_name,
            "notice": None,
            "notices_unread": unread,
            "notices_through": through,
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

    def _notices_unread(self, claims: TokenClaims) -> tuple[int, int]:
        """The header's count of unread notices, and the newest event number the page's live
        stream continues after (alliance.notify.people)."""
        with self.db.transaction() as s:
            return notices_unread(s, principal_for(s, claims), claims.subject)

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
                # A refusal that names its rule says it in the user's words; others say
                # nothing more than "not found" (existence does not leak).
                said = {"message": rule_words(exc, session.lang)} if exc.rule else {}
                return self.render(request, Page("not_found.html", said, status), session)
            if isinstance(result, Response):
                if not isinstance(result, RedirectResponse) or result.status_code != 303:
                    return result
                self._cookie(result, self._fresh(session))
                return result
            return self.render(request, result, session)

        return endpoint

    def acting(self, s: Session, ctx: Context) -> OperationContext:
        """The caller, as the domains' commands and operations take them."""
        return OperationContext(s, self.store, ctx.principal, ctx.visible, ctx.authorize)

    def attach(self, s: Session, ctx: Context, upload: UploadFile, title: str) -> Resource:
        """An uploaded file kept in the blob store (the attachment rule's checks: type, size,
        who keeps it), as the FHIR Attachment a record carries."""
        stored = store_attachment(
            session=s,
            blobs=self.blobs,
            stream=upload.file,
            content_type=upload.content_type or "",
            title=title,
            principal=ctx.principal,
            max_bytes=self.settings.max_attachment_bytes,
        )
        return fhir_attachment(self.settings.base_url, stored)

    def xinjiang(self, hospital_id: str) -> bool:
        """Whether this hospital's users read Xinjiang time beside Beijing time."""
        with self.db.transaction() as s:
            return reader_in_xinjiang(s, hospital_id)

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
