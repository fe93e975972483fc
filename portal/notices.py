"""Notices (issue 14.4): the list of what happened that concerns the signed-in person (which
patient, by name, and a link), the count in the header, both kept live by Server-Sent Events;
and the settings page where each person chooses channels beyond the portal and quiet hours.

The stream (`/notices/stream`, `text/event-stream`, HTML Living Standard 9.2) reads the
session cookie like every page, sends each new notice as an event whose id is its outbox
number, so a browser reconnecting sends `Last-Event-ID` and misses nothing; it ends (event
`end`, and 204 to a reconnection) when the session ends or is revoked. Looking for news costs
one shared query per process per poll (the newest event number); only when that moves does a
stream ask whether anything is the person's, and only then is a read audited (the patients'
names it discloses), like any page.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from functools import cached_property
from typing import Any

from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from alliance.errors import AllianceError, Invalid, Unauthorized
from alliance.notify.channels import Channel, channels_from
from alliance.notify.models import Event
from alliance.notify.outbox import events_for, last_event_number
from alliance.notify.people import (
    ZONES,
    Choices,
    choices_of,
    choose,
    link_of,
    mark_seen,
    minutes_of,
    notices,
    unread,
    urgent,
)
from alliance.security import sessions
from alliance.security.guard import Context, Interaction, Touched
from alliance.security.models import User
from alliance.security.service import principal_for
from portal.i18n import rule_words, translator
from portal.shell import Page, Shell, correctable, when
from portal.views import person_line

#: A stream ends after this long and the browser reconnects (with Last-Event-ID): no
#: connection is held for ever through proxies, and a server stopping waits at most
#: ALLIANCE_SHUTDOWN_GRACE_SECONDS for it.
STREAM_SECONDS = 120.0
#: How often an open stream checks that its session still holds (revocation), and sends a
#: comment to keep idle proxies from closing it.
CHECK_SECONDS = 2.0
KEEPALIVE_SECONDS = 15.0
#: Notices sent at most per look (more follow at the next).
BATCH = 100


class _Newest:
    """The newest outbox number, read at most once per poll interval however many streams this
    process serves (a cache of a number that only grows: a stale value only delays)."""

    def __init__(self) -> None:
        self.value = 0
        self.read_at = 0.0
        self.lock = asyncio.Lock()


def _number(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


class NoticePages(Shell):
    @cached_property
    def channels(self) -> dict[str, Channel]:
        return channels_from(self.settings)

    @cached_property
    def _newest(self) -> _Newest:
        return _Newest()

    def _zone(self, hospital_id: str) -> str:
        """A person's time zone until they choose: Xinjiang time at a Xinjiang site."""
        return "Asia/Urumqi" if self.xinjiang(hospital_id) else "Asia/Shanghai"

    def _items(
        self, s: Session, ctx: Context, events: list[Event], lang: str, xinjiang: bool
    ) -> tuple[list[dict[str, Any]], list[Touched]]:
        """Notices as people read them: what, which patient (as the reader may see them: their
        triage view before acceptance, nothing once a grant closed), when, and where to go."""
        t = translator(lang)
        ids = sorted({e.patient_id for e in events if e.patient_id})
        lines: dict[str, str] = {}
        if ids:
            found = self._search(s, ctx, "Patient", [("_id", ",".join(ids))], 200, reader=True)
            lines = {v.id: person_line(v.resource(), t) for v in found.matches}
        items = [
            {
                "number": e.id,
                "kind": e.kind,
                "words": t(f"notice:{e.kind}"),
                "patient": lines.get(e.patient_id, t("not_shared")) if e.patient_id else "",
                "link": link_of(e),
                "at": when(e.at, xinjiang),
                "urgent": urgent(e),
            }
            for e in events
        ]
        return items, [Touched(f"Patient/{pid}", pid) for pid in lines]

    # ---- the list ---------------------------------------------------------------------------

    async def notices(self, request: Request, session: sessions.WebSession) -> Page:
        """The person's notices, newest first; the unread marked, and from now read."""
        xinjiang = self.xinjiang(self.claims(session).hospital_id)
        zone = "Asia/Urumqi" if xinjiang else "Asia/Shanghai"

        def work(s: Session, ctx: Context) -> tuple[list[dict[str, Any]], list[Touched]]:
            seen_before, _ = unread(s, ctx.principal, ctx.principal.subject)
            events = notices(s, ctx.principal)
            items, touched = self._items(s, ctx, events, session.lang, xinjiang)
            for item in items[:seen_before]:
                item["unread"] = True
            mark_seen(s, ctx.principal.subject, last_event_number(s), zone)
            return items, touched

        items, _ = await self.run(
            request, session, Interaction("search", query="notices"), work, lambda v: v[1]
        )
        return Page("notices.html", {"items": items})

    # ---- the live stream --------------------------------------------------------------------

    async def notice_stream(self, request: Request) -> Response:
        session = self.session(request)
        if session is None or not await run_in_threadpool(self._alive, session):
            return Response(status_code=204)  # EventSource stops reconnecting on 204
        after = _number(request.headers.get("last-event-id"))
        if after is None:
            after = _number(request.query_params.get("after"))
        if after is None:
            after = await self._newest_number()
        return StreamingResponse(
            self._stream(request, session, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _newest_number(self) -> int:
        newest = self._newest
        async with newest.lock:
            if time.monotonic() - newest.read_at >= self.settings.notice_poll_seconds:
                newest.value = await run_in_threadpool(self._read_newest)
                newest.read_at = time.monotonic()
            return newest.value

    def _read_newest(self) -> int:
        with self.db.transaction() as s:
            return last_event_number(s)

    async def _stream(
        self, request: Request, session: sessions.WebSession, after: int
    ) -> AsyncIterator[str]:
        cookie = request.cookies.get(sessions.COOKIE)
        xinjiang = await run_in_threadpool(self.xinjiang, self.claims(session).hospital_id)
        started = checked = spoke = time.monotonic()
        yield "retry: 2000\n\n"
        while time.monotonic() - started < STREAM_SECONDS:
            if await request.is_disconnected():
                return
            now = time.monotonic()
            ended = sessions.decode(self.settings, cookie) is None
            if not ended and now - checked >= CHECK_SECONDS:
                checked = now
                ended = not await run_in_threadpool(self._alive, session)
            if ended:
                yield "event: end\ndata: {}\n\n"
                return
            if await self._newest_number() > after:
                try:
                    items, after = await self._news(request, session, after, xinjiang)
                except Unauthorized:
                    yield "event: end\ndata: {}\n\n"
                    return
                for item in items:
                    data = json.dumps(item, ensure_ascii=False)
                    yield f"id: {item['number']}\nevent: notice\ndata: {data}\n\n"
                    spoke = time.monotonic()
            if time.monotonic() - spoke >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                spoke = time.monotonic()
            await asyncio.sleep(self.settings.notice_poll_seconds)

    def _probe(self, session: sessions.WebSession, after: int) -> tuple[bool, int]:
        """Whether anything after `after` is the person's (unaudited: it discloses nothing),
        and the newest number it looked up to."""
        claims = self.claims(session)
        with self.db.transaction() as s:
            who = principal_for(s, claims)
            through = last_event_number(s)
            first = events_for(s, who, after=after, limit=1, not_by=who.username)
            return bool(first) and first[0].id <= through, through

    async def _news(
        self, request: Request, session: sessions.WebSession, after: int, xinjiang: bool
    ) -> tuple[list[dict[str, Any]], int]:
        """The person's notices after `after`, as the list shows them (an audited read), and
        the number the stream continues after."""
        mine, through = await run_in_threadpool(self._probe, session, after)
        if not mine:
            return [], through

        def work(s: Session, ctx: Context) -> tuple[list[dict[str, Any]], list[Touched]]:
            found = events_for(
                s, ctx.principal, after=after, limit=BATCH, not_by=ctx.principal.username
            )
            events = [e for e in found if e.id <= through]
            items, touched = self._items(s, ctx, events, session.lang, xinjiang)
            count, _ = unread(s, ctx.principal, ctx.principal.subject)
            for item in items:
                item["unread"] = count
            return items, touched

        items, _ = await self.run(
            request, session, Interaction("search", query="notices-stream"), work, lambda v: v[1]
        )
        # A full batch may have more after it: continue from its last, at once.
        return items, items[-1]["number"] if len(items) == BATCH else through

    # ---- settings ---------------------------------------------------------------------------

    async def notice_settings(
        self,
        request: Request,
        session: sessions.WebSession,
        error: str | None = None,
        values: dict[str, str] | None = None,
        error_status: int = 422,
    ) -> Page:
        claims = self.claims(session)
        zone = self._zone(claims.hospital_id)

        def work(s: Session, ctx: Context) -> Choices:
            user = s.get(User, ctx.principal.subject)
            if user is None:
                raise Unauthorized("the account no longer exists")
            return choices_of(s, user, zone)

        chosen = await self.run(
            request, session, Interaction("read", f"User/{claims.username}", type="security"), work
        )
        shown = values or {
            "time_zone": chosen.time_zone,
            "quiet_start": _clock_text(chosen.quiet_start),
            "quiet_end": _clock_text(chosen.quiet_end),
            "email": chosen.email or "",
            "email_on": "on" if chosen.email else "",
            "webhook_to": chosen.webhook_to or "",
            "webhook_on": "on" if chosen.webhook_to else "",
        }
        return Page(
            "notice_settings.html",
            {
                "values": shown,
                "zones": list(ZONES),
                "available": {
                    name: c.available(claims.hospital_id) for name, c in self.channels.items()
                },
                "error": error,
                "saved": request.query_params.get("saved") == "1" and error is None,
            },
            status=error_status if error else 200,
        )

    async def notice_settings_save(
        self, request: Request, session: sessions.WebSession, form: FormData
    ) -> Page | Response:
        values = {k: str(form.get(k, "")).strip() for k in _FIELDS}
        claims = self.claims(session)

        def work(s: Session, ctx: Context) -> None:
            user = s.get(User, ctx.principal.subject)
            if user is None:
                raise Unauthorized("the account no longer exists")
            try:
                quiet = minutes_of(values["quiet_start"]), minutes_of(values["quiet_end"])
            except ValueError:
                raise Invalid("quiet hours are written HH:MM", rule="notice-quiet-hours") from None
            choose(
                s,
                user,
                Choices(
                    values["time_zone"],
                    values["email"] if values["email_on"] else None,
                    values["webhook_to"] if values["webhook_on"] else None,
                    *quiet,
                ),
                self.channels,
            )

        try:
            await self.run(
                request,
                session,
                Interaction("update", f"User/{claims.username}", type="security"),
                work,
            )
        except AllianceError as exc:
            if not correctable(exc):
                raise
            return await self.notice_settings(
                request, session, rule_words(exc, session.lang), values, exc.status
            )
        return RedirectResponse("/notices/settings?saved=1", 303)


_FIELDS = ("time_zone", "quiet_start", "quiet_end", "email", "email_on", "webhook_to", "webhook_on")


def _clock_text(minutes: int | None) -> str:
    return "" if minutes is None else f"{minutes // 60:02d}:{minutes % 60:02d}"
