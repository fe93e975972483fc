"""Delivery state for administrators (issue 14.3): their hospital's subscriptions, how each is
doing, and the latest attempts with their failures."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from alliance.config import Settings
from alliance.errors import BadRequest, Forbidden
from alliance.fhir.registry import Store
from alliance.fhir.values import instant
from alliance.http import BEARER, responses
from alliance.notify.models import DeliveryAttempt, Subscription
from alliance.notify.websocket import Socket
from alliance.security.access import Principal
from alliance.security.guard import Context, Guard, Interaction, Touched


def _administrators(principal: Principal) -> None:
    if "administer" not in principal.capabilities:
        raise Forbidden("delivery state is for the hospital's administrators")


def deliveries(session: Session, hospital_id: str, limit: int) -> dict[str, Any]:
    """The hospital's subscriptions and its last `limit` delivery attempts, newest first."""
    subs = session.scalars(
        select(Subscription)
        .where(Subscription.hospital_id == hospital_id)
        .order_by(Subscription.created)
    )
    attempts = session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.hospital_id == hospital_id)
        .order_by(DeliveryAttempt.id.desc())
        .limit(limit)
    )
    return {
        "subscriptions": [
            {
                "id": s.id,
                "subscriber": s.reader_name,
                "topic": s.topic,
                "channel": s.channel,
                "endpoint": s.endpoint,
                "status": s.status,
                "error": s.error,
                "eventsSinceSubscriptionStart": s.events_since_start,
                "failuresInARow": s.failures,
                "nextAttempt": instant(s.next_attempt),
                "lastSent": instant(s.last_sent) if s.last_sent else None,
            }
            for s in subs
        ],
        "attempts": [
            {
                "subscription": a.subscription_id,
                "at": instant(a.at),
                "type": a.type,
                "events": [a.first_number, a.last_number] if a.first_number else None,
                "ok": a.ok,
                "httpStatus": a.http_status,
                "error": a.error,
                "milliseconds": a.milliseconds,
            }
            for a in attempts
        ],
    }


def notify_router(guard: Guard, store: Store, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["notifications"])
    sockets = Socket(guard.db, store, settings)

    @router.websocket("/notify/ws")
    async def websocket_channel(websocket: WebSocket) -> None:
        """The websocket channel of FHIR Subscriptions (alliance.notify.websocket)."""
        await sockets.serve(websocket)

    @router.get(
        "/notify/deliveries",
        response_class=Response,
        responses=responses({200: {"application/json": {"type": "object"}}}, [400, 401, 403, 503]),
        openapi_extra={
            "security": BEARER,
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 500}}
            ],
        },
    )
    async def delivery_state(request: Request) -> JSONResponse:
        """The administrator's hospital's FHIR Subscriptions (status, error, failures in a row,
        next attempt, events notified) and its latest delivery attempts (`limit`, default 50)
        with their outcome: HTTP status, error, time taken."""
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 500:
            raise BadRequest("limit is a whole number from 1 to 500")

        def work(session: Session, ctx: Context) -> dict[str, Any]:
            return deliveries(session, ctx.principal.hospital_id, int(raw))

        result = await guard.run(
            request,
            Interaction("search", query=request.url.query, type="query"),
            work,
            lambda _r: [Touched(None, None)],
            check=_administrators,
        )
        return JSONResponse(result)

    return router
