"""Notices to people (issue 14.4): what each person hears of the outbox, their choices (channels,
quiet hours in their own time zone), how far they have read, and delivery to the channels they
chose.

What a person hears is what the outbox's rule gives them (alliance.notify.outbox.concerns: the
events naming their hospital as a whole, naming them, or naming a capability they hold), less
what they did themselves. The portal shows it live; e-mail and the hospital's webhook carry it
beyond.

Delivery beyond the portal loses nothing, as the worker's delivery to subscriptions does, and
runs in the same worker (alliance.notify.worker, `outlets`): each chosen channel keeps a cursor
(`PersonChannel.through`) that moves only once the channel took the message, so a crash
between sending and recording sends the same events again (at least once; the message's key
names the event numbers, for de-duplication); a failure is retried with the worker's back-off;
a channel is claimed under a lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`), so two workers
never deliver it at once.

Quiet hours: while it is quiet in the person's time zone, their e-mail and webhook notices
wait and go out together when the quiet hours end. One kind breaks through: an urgent referral
past its deadline (`referral-overdue`, which names the asked hospital's administrators), since
the green channel's 2-hour deadline cannot wait for the morning; the notices waiting go with it
in the same message. (A channel waiting for its quiet hours to end is looked at again each
minute for such an escalation.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from alliance import clock, metrics
from alliance.db import Database
from alliance.errors import Invalid
from alliance.notify.channels import Channel, Line, Message, NotDelivered
from alliance.notify.models import Event, PersonChannel, PersonNotices
from alliance.notify.outbox import Reader, events_for, last_event_number, visible_events
from alliance.notify.topics import TOPICS
from alliance.notify.worker import LEASE_MARGIN, backoff
from alliance.security.models import User

#: The time zones people choose from, with their names (DOMAIN.md "Time").
ZONES = {"Asia/Shanghai": "北京时间", "Asia/Urumqi": "新疆时间"}
#: Kinds that break through quiet hours.
BREAKS_THROUGH = frozenset({"referral-overdue"})
#: The header counts unread notices up to this many ("99+").
UNREAD_CAP = 100
#: How often a channel waiting for the end of quiet hours is looked at again for an event that
#: breaks through.
QUIET_RECHECK = timedelta(minutes=1)
#: Events per message at most (more go in the next one, at once).
PER_MESSAGE = 20
EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
GATEWAY_ADDRESS = re.compile(r"^[\w.+@-]{1,128}$")


class Listener(Reader, Protocol):
    """A reader of the outbox that is a person (alliance.security.access.Principal is one)."""

    @property
    def username(self) -> str: ...


@dataclass(frozen=True)
class Person:
    """A person as a reader of the outbox (alliance.notify.outbox.Reader)."""

    username: str
    hospital_id: str
    practitioner_id: str | None
    capabilities: frozenset[str]
    kind: str = "user"

    @classmethod
    def of(cls, user: User) -> Person:
        return cls(user.username, user.hospital_id, user.practitioner_id, user.role.capability_set)


def link_of(event: Event) -> str:
    """Where in the portal to read what an event is about."""
    if event.focus_type == "ImagingStudy":
        return f"/viewer/{event.focus_id}"
    if event.task_id:
        return f"/referrals/{event.task_id}"
    return "/notices"


def urgent(event: Event) -> bool:
    return event.kind in BREAKS_THROUGH


# ---- choices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choices:
    """What a person chose: addresses (None: that channel off), quiet hours as minutes after
    their local midnight (both None: none), their time zone."""

    time_zone: str
    email: str | None = None
    webhook_to: str | None = None
    quiet_start: int | None = None
    quiet_end: int | None = None


def choices_of(session: Session, user: User, default_zone: str) -> Choices:
    row = session.get(PersonNotices, user.id)
    if row is None:
        return Choices(default_zone)
    return Choices(row.time_zone, row.email, row.webhook_to, row.quiet_start, row.quiet_end)


def minutes_of(text: str) -> int | None:
    """ "22:30" -> 1350; "" -> None; anything else: ValueError."""
    text = text.strip()
    if not text:
        return None
    hours, sep, minutes = text.partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(text)
    value = int(hours) * 60 + int(minutes)
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError(text)
    return value


def choose(
    session: Session,
    user: User,
    choices: Choices,
    channels: Mapping[str, Channel],
) -> None:
    """Keep a person's choices, refusing (nothing changed) what cannot be kept: an unknown
    zone, half a quiet period, an address that is not one, a channel their hospital lacks. A
    channel newly chosen starts from now: it does not send the past."""
    if choices.time_zone not in ZONES:
        raise Invalid(f"the time zone is one of {', '.join(ZONES)}", rule="notice-time-zone")
    if (choices.quiet_start is None) != (choices.quiet_end is None) or (
        choices.quiet_start is not None and choices.quiet_start == choices.quiet_end
    ):
        raise Invalid(
            "quiet hours need a start and a different end (HH:MM)", rule="notice-quiet-hours"
        )
    if choices.email is not None and (len(choices.email) > 254 or not EMAIL.match(choices.email)):
        raise Invalid("the e-mail address is not one", rule="notice-email")
    if choices.webhook_to is not None and not GATEWAY_ADDRESS.match(choices.webhook_to):
        raise Invalid(
            "the gateway address is a mobile number or WeChat Work account (letters, digits, "
            ". _ + @ -)",
            rule="notice-gateway-address",
        )
    wanted = {"email": choices.email, "webhook": choices.webhook_to}
    for name, address in wanted.items():
        channel = channels.get(name)
        if address is not None and (channel is None or not channel.available(user.hospital_id)):
            raise Invalid(
                f"the {name} channel is not set up for this hospital", rule="notice-channel"
            )
    row = session.get(PersonNotices, user.id)
    if row is None:
        row = PersonNotices(user_id=user.id, seen_through=0)
        session.add(row)
    row.time_zone = choices.time_zone
    row.quiet_start, row.quiet_end = choices.quiet_start, choices.quiet_end
    row.email, row.webhook_to = choices.email, choices.webhook_to
    newest = last_event_number(session)
    for name, address in wanted.items():
        state = session.get(PersonChannel, (user.id, name))
        if address is None and state is not None:
            session.delete(state)
        elif address is not None and state is None:
            session.add(
                PersonChannel(
                    user_id=user.id,
                    channel=name,
                    through=newest,
                    failures=0,
                    next_attempt=clock.now(),
                )
            )
    session.flush()


def quiet_until(choices: Choices, now: datetime) -> datetime | None:
    """When the person's quiet hours end, if `now` is inside them (else None). A period may
    run over midnight (22:00-07:00)."""
    start, end = choices.quiet_start, choices.quiet_end
    if start is None or end is None or start == end:
        return None
    local = now.astimezone(ZoneInfo(choices.time_zone))
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return None
    ends = local.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
    if ends <= local:
        ends += timedelta(days=1)
    return ends.astimezone(UTC)


# ---- the portal's list and count ----------------------------------------------------------


def unread(session: Session, person: Listener, user_id: str) -> tuple[int, int]:
    """How many notices the person has not seen in the list (counted up to UNREAD_CAP: every
    page shows it, so the count never scans a long history), and the newest outbox number (the
    live stream continues from it)."""
    row = session.get(PersonNotices, user_id)
    seen = row.seen_through if row is not None else 0
    query = (
        visible_events(person, after=seen, not_by=person.username)
        .with_only_columns(Event.id)
        .order_by(Event.id.desc())
        .limit(UNREAD_CAP)
        .subquery()
    )
    count = int(session.scalar(select(func.count()).select_from(query)) or 0)
    return count, last_event_number(session)


def notices(session: Session, person: Listener, *, limit: int = 50) -> list[Event]:
    """The person's notices, newest first."""
    return events_for(session, person, limit=limit, not_by=person.username, newest_first=True)


def mark_seen(session: Session, user_id: str, through: int, default_zone: str) -> None:
    """The person has seen the list up to event `through` (never moves back)."""
    row = session.get(PersonNotices, user_id)
    if row is None:
        row = PersonNotices(user_id=user_id, time_zone=default_zone, seen_through=0)
        session.add(row)
    row.seen_through = max(row.seen_through or 0, through)


# ---- delivery -------------------------------------------------------------------------------


def describe(event: Event, time_zone: str, base_url: str) -> Line:
    """An event as one line of a message, in the person's time zone."""
    local = event.at.astimezone(ZoneInfo(time_zone))
    topic = TOPICS.get(event.kind)
    words = topic.title if topic is not None else event.kind
    if urgent(event):
        words = f"【紧急】{words}"
    return Line(
        number=event.id,
        kind=event.kind,
        words=words,
        at=f"{local:%Y-%m-%d %H:%M} {ZONES.get(time_zone, time_zone)}",
        link=base_url.rstrip("/") + link_of(event),
        urgent=urgent(event),
    )


@dataclass
class _Due:
    """One claimed channel's message, or why there is none."""

    message: Message | None
    through: int
    hold_until: datetime | None = None


class PeopleDelivery:
    """Delivers people's notices to their chosen channels; `run_once` is one pass (the worker
    runs it after its own, tests call it with a moved clock)."""

    def __init__(
        self,
        db: Database,
        channels: Mapping[str, Channel],
        base_url: str,
        *,
        batch: int = 20,
        timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self.db = db
        self.channels = dict(channels)
        self.base_url = base_url
        self.batch = batch
        self.lease = timeout + LEASE_MARGIN

    def run_once(self) -> int:
        """Deliver to the channels now due; returns how many were attempted."""
        claimed = self.claim()
        for user_id, channel in claimed:
            self.deliver(user_id, channel)
        return len(claimed)

    def claim(self) -> list[tuple[str, str]]:
        now = clock.now()
        with self.db.transaction(write=True) as session:
            newest = last_event_number(session)
            due = (
                select(PersonChannel)
                .where(
                    PersonChannel.channel.in_(sorted(self.channels)),
                    PersonChannel.through < newest,
                    PersonChannel.next_attempt <= now,
                    or_(PersonChannel.leased_until.is_(None), PersonChannel.leased_until < now),
                )
                .order_by(PersonChannel.next_attempt)
                .limit(self.batch)
            )
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            claimed = []
            for row in session.scalars(due):
                row.leased_until = now + self.lease
                claimed.append((row.user_id, row.channel))
        return claimed

    def deliver(self, user_id: str, channel_name: str) -> None:
        """One message to one leased channel, and its outcome recorded."""
        due = self._compose(user_id, channel_name)
        error: str | None = None
        if due.message is not None:
            channel = self.channels[channel_name]
            try:
                if not channel.available(due.message.hospital_id):
                    # Taken out of the settings since it was chosen: the notices wait.
                    raise NotDelivered(f"no {channel_name} channel is set up for this hospital")
                channel.send(due.message)
            except NotDelivered as exc:
                error = str(exc)
            outcome = "ok" if error is None else "failed"
            metrics.NOTICE_DELIVERIES.labels(channel_name, outcome).inc()
        self._record(user_id, channel_name, due, error)

    def _compose(self, user_id: str, channel_name: str) -> _Due:
        with self.db.transaction() as session:
            state = session.get(PersonChannel, (user_id, channel_name))
            user = session.get(User, user_id)
            prefs = session.get(PersonNotices, user_id)
            through = last_event_number(session)
            if state is None or user is None or prefs is None:
                return _Due(None, through)
            address = prefs.email if channel_name == "email" else prefs.webhook_to
            if not user.active or address is None:
                # A locked account hears nothing, and nothing piles up for its unlocking.
                return _Due(None, through)
            person = Person.of(user)
            events = [
                e
                for e in events_for(
                    session, person, after=state.through, limit=PER_MESSAGE, not_by=user.username
                )
                if e.id <= through
            ]
            if len(events) == PER_MESSAGE:
                through = events[-1].id  # more after these: the next pass, at once
            if not events:
                return _Due(None, through)
            choices = Choices(
                prefs.time_zone, prefs.email, prefs.webhook_to, prefs.quiet_start, prefs.quiet_end
            )
            hold = quiet_until(choices, clock.now())
            if hold is not None and not any(urgent(e) for e in events):
                return _Due(None, state.through, hold_until=hold)
            lines = [describe(e, prefs.time_zone, self.base_url) for e in events]
            subject = (
                f"[医联体] {lines[0].words}"
                if len(lines) == 1
                else f"[医联体] {len(lines)} 条新通知"
                + ("（含紧急）" if any(x.urgent for x in lines) else "")
            )
            return _Due(
                Message(address, user.username, user.hospital_id, subject, lines),
                through,
            )

    def _record(self, user_id: str, channel_name: str, due: _Due, error: str | None) -> None:
        now = clock.now()
        with self.db.transaction(write=True) as session:
            state = session.get(PersonChannel, (user_id, channel_name))
            if state is None:
                return
            state.leased_until = None
            if error is not None:
                state.failures += 1
                state.error = error[:500]
                state.next_attempt = now + backoff(state.failures)
                return
            if due.hold_until is not None:
                # Looked at again every QUIET_RECHECK for an escalation that breaks through.
                state.next_attempt = min(due.hold_until, now + QUIET_RECHECK)
                return
            state.through = max(state.through, due.through)
            state.failures = 0
            state.error = None
            state.next_attempt = now
            if due.message is not None:
                state.last_sent = now
