"""The audit trail and the dashboard, for auditors (and administrators for the figures)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alliance import clock
from alliance.audit.anchor import TrailResult, verify_trail
from alliance.errors import Forbidden
from alliance.fhir.types import SearchResult
from alliance.security import sessions
from alliance.security.access import Principal
from alliance.security.guard import Context, Interaction
from portal.charts import bar_chart, stacked_months
from portal.i18n import translator
from portal.shell import Page, Shell, when
from portal.views import (
    auditors_only,
)
from referral.stats import Period, reason_reader, referral_figures


class AuditPages(Shell):
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
            check=auditors_only,
        )
        xinjiang = self.xinjiang(self.claims(session).hospital_id)
        events = []
        for v in result.matches:
            e = v.resource()
            agent = e["agent"][0]
            events.append(
                {
                    "when": when(e["recorded"], xinjiang),
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
        check = auditors_only
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
