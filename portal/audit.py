"""The audit trail and the dashboard, for auditors (and administrators for the figures)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from alliance import clock
from alliance.audit.anchor import TrailResult, verify_trail
from alliance.codes import RESIDENT_ID
from alliance.errors import Forbidden
from alliance.fhir.types import Version
from alliance.security import sessions
from alliance.security.access import Principal
from alliance.security.guard import Context, Interaction, Touched
from alliance.security.service import accounts
from portal.charts import bar_chart, stacked_months
from portal.i18n import translator
from portal.shell import Page, Shell, when
from portal.views import auditors_only, person_line
from referral.stats import Period, reason_reader, referral_figures

#: The interactions the trail records, as the filter offers them (their words: `audit_<code>`).
AUDIT_SUBTYPES = (
    "read",
    "vread",
    "history",
    "search",
    "create",
    "update",
    "delete",
    "operation",
    "retrieve",
    "store",
    "export",
    "110122",
    "110123",
    "grant-open",
    "grant-close",
    "grant-end",
    "audit-verify",
    "dicom-association-rejected",
)


def short_reference(reference: str) -> str:
    """`Task/0d29e4f1-…` -> `Task 0d29e4f1`: enough to tell records apart on a page (the CSV
    export keeps the whole reference)."""
    kind, _, rid = reference.partition("/")
    return f"{kind} {rid[:8]}" if rid else kind


def _patient_of(event: dict[str, Any]) -> str | None:
    """The patient an AuditEvent is about (its entity with role 1, Patient)."""
    for x in event.get("entity", []):
        if x.get("role", {}).get("code") == "1" and "reference" in x.get("what", {}):
            return str(x["what"]["reference"]).removeprefix("Patient/")
    return None


class AuditPages(Shell):
    # ---- auditors ---------------------------------------------------------------------------

    async def audit(
        self, request: Request, session: sessions.WebSession, verified: TrailResult | None = None
    ) -> Page:
        """The trail, filtered by people, hospitals and patients picked by name (never by
        internal ids), codes and outcomes in words. A patient is found by name or identity
        number; the names of the patients on the page are shown, and each patient shown is
        recorded as touched by the auditor's search."""
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
        looked_for = q.get("patient_q", "").strip()

        def work(s: Session, ctx: Context) -> dict[str, Any]:
            data: dict[str, Any] = {
                "hospitals": self._hospitals(s, ctx),
                "people": accounts(s),
                "candidates": [],
            }
            asked = list(params)
            if looked_for and not q.get("patient"):
                data["candidates"] = [
                    (v.id, person_line(v.resource(), translator(session.lang)))
                    for v in self._patients_named(s, looked_for)
                ]
                if len(data["candidates"]) != 1:
                    data["result"] = None
                    return data
                asked.append(("patient", data["candidates"][0][0]))
            data["result"] = self._search(s, ctx, "AuditEvent", [*asked, ("_count", "50")], 50)
            shown = sorted(
                {pid for v in data["result"].matches if (pid := _patient_of(v.resource()))}
            )
            data["patients"] = (
                {
                    v.id: person_line(v.resource(), translator(session.lang))
                    for v in self.store.search(
                        "Patient",
                        [("_id", ",".join(shown))],
                        session=s,
                        default_count=len(shown),
                        max_count=len(shown),
                    ).matches
                }
                if shown
                else {}
            )
            return data

        data = await self.run(
            request,
            session,
            Interaction("search", query=urlencode(params)),
            work,
            lambda d: [Touched(f"Patient/{p}", p) for p in d.get("patients") or {}],
            check=auditors_only,
        )
        xinjiang = self.xinjiang(self.claims(session).hospital_id)
        names = {a.username: a.display_name for a in data["people"]}
        events = []
        result = data["result"]
        for v in result.matches if result is not None else []:
            e = v.resource()
            agent = e["agent"][0]
            username = (agent.get("who") or {}).get("identifier", {}).get("value")
            hospital = next(
                (
                    x["valueReference"]["reference"].removeprefix("Organization/")
                    for x in agent.get("extension", [])
                ),
                "",
            )
            patient = _patient_of(e)
            events.append(
                {
                    "when": when(e["recorded"], xinjiang),
                    "user": f"{names.get(username, '')} ({username})" if username else "—",
                    "hospital": data["hospitals"].get(hospital, hospital),
                    "subtype": e["subtype"][0]["code"],
                    "outcome": e["outcome"],
                    "entity": short_reference(
                        next(
                            (
                                x["what"]["reference"]
                                for x in e.get("entity", [])
                                if "reference" in x.get("what", {}) and x["role"]["code"] != "1"
                            ),
                            "",
                        )
                    ),
                    "patient": data["patients"].get(patient, patient) if patient else "",
                }
            )
        next_page = None
        if result is not None and result.next_page:
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
                "searched": result is not None,
                "candidates": [
                    (line, "/audit?" + urlencode({**q, "patient": pid}))
                    for pid, line in data["candidates"]
                ],
                "hospitals": data["hospitals"],
                "people": data["people"],
                "subtypes": AUDIT_SUBTYPES,
                "q": q,
                "next_page": next_page,
                "verify": verified,
                "csv_link": "/api/audit/events.csv?"
                + urlencode([p for p in params if p[0] != "_page_offset"]),
            },
        )

    def _hospitals(self, s: Session, ctx: Context) -> dict[str, str]:
        """The alliance's hospitals (organizations that are part of none), id to name."""
        found = self._search(s, ctx, "Organization", [("_count", "200")], 200)
        return {
            v.id: str(v.resource().get("name", v.id))
            for v in found.matches
            if not v.resource().get("partOf")
        }

    def _patients_named(self, s: Session, text: str) -> list[Version]:
        """Patients anywhere in the alliance by name or resident identity number, for an
        auditor tracing who opened a patient's records (the search itself is audited)."""
        compact = text.replace(" ", "").upper()
        by_number = compact[:17].isdigit() and len(compact) == 18
        params = [("identifier", f"{RESIDENT_ID}|{compact}")] if by_number else [("name", text)]
        return self.store.search(
            "Patient", [*params, ("_count", "20")], session=s, default_count=20, max_count=20
        ).matches

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
        """The alliance's figures for a period (default: the last year) and optionally one
        hospital: requests per month (up, down, teleconsult) on an axis, per hospital pair,
        decline reasons, turnaround in minutes or hours, overdue now."""
        today = clock.today()
        first = _day(request.query_params.get("from"), today - timedelta(days=365))
        last = _day(request.query_params.get("to"), today)
        if last < first:
            first, last = last, first
        hospital = request.query_params.get("hospital") or None
        period = Period.of_days(first, last)

        def check(principal: Principal) -> None:
            if not principal.capabilities & {"audit", "administer"}:
                raise Forbidden("auditors and administrators only")

        def work(s: Session, ctx: Context) -> dict[str, Any]:
            figures = referral_figures(
                s, period, reader_hospital=reason_reader(ctx.principal), hospital=hospital
            )
            return {"figures": figures, "hospitals": self._hospitals(s, ctx)}

        data = await self.run(
            request,
            session,
            Interaction("search", query=urlencode(request.query_params), type="query"),
            work,
            check=check,
        )
        t = translator(session.lang)
        figures, names = data["figures"], data["hospitals"]
        kinds = {
            "up": t("up-referral"),
            "down": t("down-referral"),
            "teleconsult": t("teleconsult"),
        }
        per_pair: Counter[tuple[str, str, str]] = Counter()
        for p in figures["pairs"]:
            per_pair[(p["direction"], p["from"], p["to"])] += p["sent"]
        return Page(
            "dashboard.html",
            {
                "figures": figures,
                "names": names,
                "hospitals": names,
                "chosen": {"from": first.isoformat(), "to": last.isoformat(), "hospital": hospital},
                "turnaround": {
                    key: {
                        "median": duration_words(row["median_hours"], t),
                        "p90": duration_words(row["p90_hours"], t),
                        "count": row["count"],
                    }
                    for key, row in figures["turnaround"].items()
                },
                "month_chart": stacked_months(figures["pairs"], kinds),
                "pair_chart": bar_chart(
                    [
                        (f"{names.get(a, a)} → {names.get(b, b)} · {kinds[d]}", n)
                        for (d, a, b), n in sorted(per_pair.items(), key=lambda kv: -kv[1])
                    ],
                    t("per_pair"),
                    "#0b6e99",
                ),
                "reasons_chart": bar_chart(
                    [(r["display"], r["count"]) for r in figures["rejection_reasons"]],
                    t("decline_reasons"),
                ),
            },
        )


def _day(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


def duration_words(hours: float | None, t: Callable[[str], str]) -> str:
    """A turnaround as people read it: minutes under two hours, hours under two days, then
    days; — for none."""
    if hours is None:
        return "—"
    if hours < 2:
        return t("n_minutes").format(n=round(hours * 60))
    if hours < 48:
        return t("n_hours").format(n=f"{hours:.1f}")
    return t("n_days").format(n=f"{hours / 24:.1f}")
