"""A hospital administrator's staff pages: accounts (create, lock, reset, change role) and a
doctor's account linked to the practitioner it acts as, in a department with their title and,
for a specialist, the weekly hours they take teleconsults."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alliance import clock
from alliance.codes import PROFESSIONAL_TITLES
from alliance.directory.commands import Enrolled, PersonName, enrol_practitioner
from alliance.errors import NotFound
from alliance.security import sessions
from alliance.security.guard import Context, Interaction
from alliance.security.service import (
    accounts,
    create_user,
    get_user,
    link_practitioner,
    manageable_roles,
    reset_password,
    set_locked,
    set_role,
)
from portal.admin import AdminPages
from portal.i18n import translator
from portal.shell import Page
from portal.views import HoursLineError, parse_hours
from teleconsult.commands import open_consult_schedule


class StaffPages(AdminPages):
    async def staff(
        self,
        request: Request,
        session: sessions.WebSession,
        new_password: str | None = None,
        error: str | None = None,
        values: dict[str, str] | None = None,
        error_status: int = 422,
    ) -> Page:
        hospital = self.claims(session).hospital_id

        def work(s: Session, _ctx: Context) -> list[dict[str, Any]]:
            return [
                {
                    "username": a.username,
                    "display_name": a.display_name,
                    "role_name": a.role,
                    "active": a.active,
                    "practitioner_id": a.practitioner_id,
                }
                for a in accounts(s, hospital)
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
            error_status if error else 200,
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

        async def shown(password: str) -> Page:
            return await self.staff(request, session, new_password=password)

        # A refusal naming its rule (a role this administrator does not give) is said on the
        # form, with what was typed; any other 403 is the plain refusal page.
        return await self.administer(
            request,
            session,
            Interaction("create", f"User/{values.get('username')}", type="security"),
            work,
            lambda error, status: self.staff(
                request, session, error=error, values=values, error_status=status
            ),
            shown,
        )

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

    # ---- a doctor's account linked to their practitioner -----------------------------------

    async def practitioner_form(
        self,
        request: Request,
        session: sessions.WebSession,
        username: str,
        error: str | None = None,
        values: dict[str, str] | None = None,
        error_status: int = 422,
    ) -> Page:
        """Link an account to the doctor it is: their name, department and title (职称), and
        for a specialist the weekly hours they take teleconsults, so requests for their
        department are offered their times."""
        hospital = self.claims(session).hospital_id

        def work(s: Session, ctx: Context) -> dict[str, Any]:
            account = get_user(session=s, username=username)
            if account.hospital_id != hospital:
                raise NotFound(f"no account {username!r} at this hospital")
            return {
                "account": {
                    "username": account.username,
                    "display_name": account.display_name,
                    "practitioner_id": account.practitioner_id,
                },
                "departments": [d for d in self._department_rows(s, ctx, hospital) if d["active"]],
            }

        data = await self.run(
            request,
            session,
            Interaction("read", f"User/{username}", type="security"),
            work,
            check=self._admins_only,
        )
        form = values or {"name": data["account"]["display_name"]}
        return Page(
            "practitioner_link.html",
            {**data, "titles": PROFESSIONAL_TITLES, "error": error, "form": form},
            error_status if error else 200,
        )

    async def practitioner_link(
        self, request: Request, session: sessions.WebSession, form: FormData, username: str
    ) -> Page | Response:
        values = {k: str(v).strip() for k, v in form.items() if isinstance(v, str)}
        t = translator(session.lang)

        async def again(error: str, status: int = 422) -> Page:
            return await self.practitioner_form(
                request, session, username, error=error, values=values, error_status=status
            )

        if not values.get("name") or not values.get("department") or not values.get("title"):
            return await again(t("required"))
        try:
            spans = parse_hours(values.get("hours", ""))
        except HoursLineError as exc:
            return await again(exc.said(t))

        def work(s: Session, ctx: Context) -> Enrolled:
            acting = self.acting(s, ctx)
            enrolled = enrol_practitioner(
                acting,
                name=PersonName(values["name"]),
                title=values["title"],
                department_id=values["department"],
            )
            link_practitioner(
                session=s,
                by=ctx.principal,
                username=username,
                practitioner_id=enrolled.practitioner_id,
            )
            if spans:
                open_consult_schedule(acting, enrolled.role_id, spans, start=clock.today())
            return enrolled

        return await self.administer(
            request,
            session,
            Interaction("update", f"User/{username}", type="security"),
            work,
            again,
            "/admin/staff",
        )
