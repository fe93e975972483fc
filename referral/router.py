"""The referral domain's HTTP beyond FHIR: the alliance's referral figures (documented in the
API docs)."""

from __future__ import annotations

from datetime import date, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from alliance import clock
from alliance.errors import BadRequest, Forbidden
from alliance.http import BEARER, responses
from alliance.security.access import Principal
from alliance.security.guard import Guard, Interaction, Touched
from referral.stats import Period, reason_reader, referral_figures


def _figures_readers(principal: Principal) -> None:
    if not principal.capabilities & {"audit", "administer"}:
        raise Forbidden("the alliance's figures are for auditors and administrators")


def _parse_day(value: str | None, default: date, name: str) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} is a date, YYYY-MM-DD") from None


def referral_router(guard: Guard) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["referral"])

    @router.get(
        "/stats/referrals",
        response_class=Response,
        responses=responses({200: {"application/json": {"type": "object"}}}, [400, 401, 403, 503]),
        openapi_extra={
            "security": BEARER,
            "parameters": [
                {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                {"name": "granularity", "in": "query", "schema": {"enum": ["month"]}},
            ],
        },
    )
    async def figures(request: Request) -> JSONResponse:
        """Referrals up and down and teleconsult requests (`direction` up, down,
        teleconsult) per hospital pair and month (Beijing time), accepted /
        rejected / completed / cancelled, decline reasons, median and 90th-percentile
        (nearest rank) hours from request to acceptance and to completion, and how many are
        overdue now. `from` and `to` are days (YYYY-MM-DD, inclusive; default: the last 12
        months); `granularity=month`; `hospital` (an id) counts only what that hospital sent or
        was asked."""
        today = clock.today()
        first = _parse_day(request.query_params.get("from"), today - timedelta(days=365), "from")
        last = _parse_day(request.query_params.get("to"), today, "to")
        if last < first:
            raise BadRequest("to is before from")
        if request.query_params.get("granularity", "month") != "month":
            raise BadRequest("granularity is month")
        try:
            period = Period.of_days(first, last)
        except OverflowError:  # 0001-01-01 Beijing time is year 0 in UTC
            raise BadRequest("from and to are dates from 0001-01-02 to 9999-12-30") from None
        result = await guard.run(
            request,
            Interaction("search", query=request.url.query, type="query"),
            lambda session, ctx: referral_figures(
                session,
                period,
                reader_hospital=reason_reader(ctx.principal),
                hospital=request.query_params.get("hospital") or None,
            ),
            lambda _r: [Touched(None, None)],
            check=_figures_readers,
        )
        return JSONResponse(result)

    return router
