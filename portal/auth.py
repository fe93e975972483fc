"""Logging in and out, and the language of the pages."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import replace

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from alliance.errors import Unauthorized
from alliance.security import sessions
from alliance.security.login import LoginRefused, log_in, log_out_everywhere
from portal.i18n import translator
from portal.shell import Page, Shell


class AuthPages(Shell):
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
