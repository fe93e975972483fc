"""The `websocket` channel of the R4 Subscriptions Backport IG: the subscriber asks for a
binding token (`Subscription/[id]/$get-ws-binding-token`), opens the websocket the answer
names, sends `bind-with-token <token>`, and receives the handshake, then each notification
Bundle as a text frame, and heartbeats.

The socket's own API process streams from the outbox (no other process holds state for it):
every half second it sends the subscription's events after its cursor and moves the cursor, as
the rest-hook worker does after a 2xx. A websocket has no acknowledgement: a notification lost
with a dropped connection is fetched by number with `$events` (the IG's answer), and the event
numbers tell the receiver what it missed. One socket at a time per subscription (a lease,
renewed while it lives): a second is refused.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import or_, update
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from alliance import clock
from alliance.config import Settings
from alliance.db import Database
from alliance.errors import Invalid
from alliance.fhir.registry import OperationContext, OperationResult, Resource, Store
from alliance.fhir.values import instant
from alliance.notify.models import Subscription
from alliance.notify.outbox import last_event_number
from alliance.notify.subscriptions import (
    notification_bundle,
    own_subscription,
    pending,
    subscriber_active,
)

#: Where the socket is (under the server's base URL, http -> ws).
WS_PATH = "/api/notify/ws"
TOKEN_SECONDS = 300
POLL_SECONDS = 0.5
LEASE = timedelta(seconds=10)


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    secrets_ = [secret for _kid, secret in reversed(settings.signing_keys)]
    return URLSafeTimedSerializer(secrets_, salt="alliance subscription websocket")


def run_binding_token(
    acting: OperationContext, parameters: Resource, settings: Settings
) -> OperationResult:
    """`$get-ws-binding-token` (backport IG): a token, valid for 5 minutes, that binds one
    websocket to this websocket subscription, and the socket's URL."""
    row = own_subscription(acting, parameters)
    if row.channel != "websocket":
        raise Invalid(
            "a binding token is for a subscription with a websocket channel",
            rule="subscription-not-websocket",
        )
    token = _serializer(settings).dumps({"subscription": row.id})
    base = settings.base_url.rstrip("/")
    ws = "wss://" + base[8:] if base.startswith("https://") else "ws://" + base[7:]
    expires = clock.now() + timedelta(seconds=TOKEN_SECONDS)
    result = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "token", "valueString": token},
            {"name": "expiration", "valueDateTime": instant(expires)},
            {"name": "subscription", "valueString": row.id},
            {"name": "websocket-url", "valueUrl": ws + WS_PATH},
        ],
    }
    return OperationResult(result, [(f"Subscription/{row.id}", None)])


class Socket:
    """One bound websocket: its subscription, streamed from the outbox."""

    def __init__(self, db: Database, store: Store, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings

    def bind(self, text: str) -> str | None:
        """The subscription a `bind-with-token` message binds to (leased to this socket), or
        None when the token is wrong, expired, or the subscription is off or bound already."""
        verb, _, token = text.strip().partition(" ")
        if verb != "bind-with-token":
            return None
        try:
            claims = _serializer(self.settings).loads(token.strip(), max_age=TOKEN_SECONDS)
        except (BadSignature, SignatureExpired):
            return None
        sub_id = str(claims.get("subscription", ""))
        now = clock.now()
        with self.db.transaction(write=True) as session:
            taken = session.execute(
                update(Subscription)
                .where(
                    Subscription.id == sub_id,
                    Subscription.channel == "websocket",
                    Subscription.status.in_(("requested", "active", "error")),
                    or_(Subscription.leased_until.is_(None), Subscription.leased_until < now),
                )
                .values(leased_until=now + LEASE)
            )
        return sub_id if taken.rowcount == 1 else None  # type: ignore[attr-defined]

    def next_message(self, sub_id: str, first: bool) -> dict[str, Any] | None:
        """The next notification to send (the handshake first, then events, or a heartbeat
        when due), with the cursor moved and the lease renewed; None when there is nothing."""
        now = clock.now()
        with self.db.transaction(write=True) as session:
            row = session.get(Subscription, sub_id)
            if row is None or row.status == "off" or not subscriber_active(session, row):
                raise WebSocketDisconnect(code=1000)
            row.leased_until = now + LEASE
            if first:
                if row.status == "requested":
                    row.status = "active"
                    resource = self.store.read("Subscription", row.id, session=session).resource()
                    resource["status"] = "active"
                    self.store.update("Subscription", row.id, resource, session=session, actor=None)
                row.last_sent = now
                return notification_bundle(session, self.store, row, "handshake", self._base())
            through = last_event_number(session)
            events = pending(session, row, through)
            if events:
                numbered = [(row.events_since_start + i + 1, e) for i, e in enumerate(events)]
                bundle = notification_bundle(
                    session, self.store, row, "event-notification", self._base(), numbered
                )
                row.events_since_start = numbered[-1][0]
                row.matched_through = events[-1].id if len(events) == row.max_count else through
                row.last_sent = now
                return bundle
            row.matched_through = max(row.matched_through, through)
            if row.heartbeat_seconds and _due(
                row.last_sent or row.created, row.heartbeat_seconds, now
            ):
                row.last_sent = now
                return notification_bundle(session, self.store, row, "heartbeat", self._base())
            return None

    def release(self, sub_id: str) -> None:
        with self.db.transaction(write=True) as session:
            row = session.get(Subscription, sub_id)
            if row is not None:
                row.leased_until = None

    def _base(self) -> str:
        return self.settings.fhir_base

    async def serve(self, websocket: WebSocket) -> None:
        await websocket.accept()
        sub_id: str | None = None
        try:
            sub_id = await run_in_threadpool(self.bind, await websocket.receive_text())
            if sub_id is None:
                await websocket.close(code=1008, reason="bind-with-token: token not valid")
                return
            first = True
            while True:
                message = await run_in_threadpool(self.next_message, sub_id, first)
                first = False
                if message is not None:
                    await websocket.send_json(message)
                    continue
                await asyncio.sleep(POLL_SECONDS)
        except WebSocketDisconnect:
            pass
        finally:
            if sub_id is not None:
                await run_in_threadpool(self.release, sub_id)


def _due(since: datetime, seconds: int, now: datetime) -> bool:
    return since + timedelta(seconds=seconds) <= now
