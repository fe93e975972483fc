"""A hospital administrator's pages: departments and the consult calendar (staff accounts:
portal.staff)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alliance.codes import DEPARTMENT_CODES
from alliance.directory.commands import department_code, open_department, set_department_open
from alliance.errors import AllianceError, Forbidden, NotFound
from alliance.fhir.types import Version
from alliance.numbers import whole_number
from alliance.security import sessions
from alliance.security.access import Principal
from alliance.security.guard import Context, Interaction
from portal.i18n import rule_words, translator
from portal.shell import Page, Shell, correctable
from portal.views import HoursLineError, hours_line, parse_hours

T = TypeVar("T")


class AdminPages(Shell):
    # ---- administrators ------------------------------------------------------------------------

    async def departments(
        self,
        request: Request,
        session: sessions.WebSession,
        error: str | None = None,
        values: dict[str, str] | None = None,
    ) -> Page:
        hospital = self.claims(session).hospital_id

        def work(s: Session, ctx: Context) -> list[dict[str, Any]]:
            return self._department_rows(s, ctx, hospital)

        rows = await self.run(
            request,
            session,
            Interaction("search", query="departments"),
            work,
            check=self._admins_only,
        )
        # The register's subjects, each with its specialties (03 内科: 03.01 呼吸内科专业, ...).
        codes = [
            (
                code,
                display,
                [(c, d) for c, d in sorted(DEPARTMENT_CODES.items()) if c.startswith(f"{code}.")],
            )
            for code, display in sorted(DEPARTMENT_CODES.items())
            if "." not in code
        ]
        return Page(
            "departments.html",
            {
                "departments": rows,
                "codes": codes,
                "error": error,
                "form": values or {},
                "hospital_name": self._hospital_name(hospital),
            },
            422 if error else 200,
        )

    def _department_rows(self, s: Session, ctx: Context, hospital: str) -> list[dict[str, Any]]:
        """The hospital's departments: id, name, whether open, and their national code."""
        found = self._search(
            s, ctx, "Organization", [("partof", f"Organization/{hospital}"), ("_count", "200")], 200
        )
        rows = []
        for v in found.matches:
            org = v.resource()
            coding = department_code(org) or {}
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

    async def department_create(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        name = str(form.get("name", "")).strip()
        code, _, display = str(form.get("code", "")).partition("|")
        typed = {"name": name, "code": str(form.get("code", ""))}
        if not name or not code:
            return await self.departments(
                request, session, error=translator(session.lang)("required"), values=typed
            )
        return await self.administer(
            request,
            session,
            Interaction("create", "Organization"),
            lambda s, ctx: open_department(
                self.acting(s, ctx), name=name, code=code, display=display
            ),
            lambda error, _status: self.departments(request, session, error=error, values=typed),
            "/admin/departments",
        )

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
            return set_department_open(self.acting(s, ctx), dept_id, action == "open")

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
        self,
        request: Request,
        session: sessions.WebSession,
        error: str | None = None,
        values: dict[str, str] | None = None,
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
                "hours": [
                    hours_line(span, translator(session.lang))
                    for span in (service or {}).get("availableTime") or []
                ],
                "zone": zone,
                "error": error,
                "form": values or {},
                "hospital_name": self._hospital_name(hospital),
            },
            422 if error else 200,
        )

    async def _change_calendar(
        self,
        request: Request,
        session: sessions.WebSession,
        change: Callable[[dict[str, Any]], None],
        typed: dict[str, str] | None = None,
    ) -> Page | Response:
        hospital = self.claims(session).hospital_id

        def work(s: Session, ctx: Context) -> Version:
            found = self._calendar(s, ctx, hospital)
            if found is None:
                raise NotFound("this hospital has no consult calendar")
            service = found.resource()
            change(service)
            return self.acting(s, ctx).update(service)

        return await self.administer(
            request,
            session,
            Interaction("update", "HealthcareService"),
            work,
            lambda error, _status: self.calendar(request, session, error=error, values=typed),
            "/admin/calendar",
        )

    async def closure_add(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        start, end = str(form.get("start", "")), str(form.get("end", ""))
        description = str(form.get("description", "")).strip()
        typed = {"start": start, "end": end, "description": description}
        if not start or not end or not description:
            return await self.calendar(
                request, session, error=translator(session.lang)("required"), values=typed
            )

        def add(service: dict[str, Any]) -> None:
            closures = service.setdefault("notAvailable", [])
            closures.append({"description": description, "during": {"start": start, "end": end}})

        return await self._change_calendar(request, session, add, typed)

    async def hours_save(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        """Weekly hours, one span per line as people write them (`周一至周五 08:00-12:00`,
        portal.views.parse_hours_line). The calendar's own checks (teleconsult rules) refuse
        what does not make sense."""
        typed = {"hours": str(form.get("hours", ""))}
        try:
            spans = parse_hours(typed["hours"])
        except HoursLineError as exc:
            said = exc.said(translator(session.lang))
            return await self.calendar(request, session, error=said, values=typed)

        def replace(service: dict[str, Any]) -> None:
            service["availableTime"] = spans

        return await self._change_calendar(request, session, replace, typed)

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

    async def administer(
        self,
        request: Request,
        session: sessions.WebSession,
        interaction: Interaction,
        work: Callable[[Session, Context], T],
        again: Callable[[str, int], Awaitable[Page]],
        then: str | Callable[[T], Awaitable[Page | Response]],
    ) -> Page | Response:
        """Do an administrator's change (hospital administrators only): done, on to `then` (an
        address, or what to show with the result); refused for a reason the person can
        correct, the form `again` saying why in their language (with the refusal's status),
        as portal.referrals.ReferralPages.act_on_referral does for a referral's page."""
        try:
            done = await self.run(request, session, interaction, work, check=self._admins_only)
        except AllianceError as exc:
            if not correctable(exc):
                raise
            return await again(rule_words(exc, session.lang), exc.status)
        if isinstance(then, str):
            return RedirectResponse(then, 303)
        return await then(done)
