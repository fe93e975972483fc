"""The transactional outbox (issue 14, item 1).

An event is recorded in the transaction of the change that causes it (`record`), by the
domains' write hooks, so every face (the FHIR API, the portal, the demo seed) produces the
same events and none is recorded for a change that rolled back. Readers take events by number:
`events_for(session, reader, after=N)` lists what a principal (a person, or a partner system
of one hospital) may see after event N; the delivery worker and the portal's live notices
read it.

Numbers grow in commit order: `record` takes the lock the audit trail's appends take
(alliance.audit.service.AUDIT_LOCK: a PostgreSQL advisory lock held to commit; SQLite's one
writer), so event N+1 never commits before event N and a reader that has seen N can never
later find a smaller number appear. A write that rolls back leaves a gap in the numbers; gaps
are not missing events. The audit's lock is used, not a second one, because every write that
records an event also appends to the audit trail: one lock cannot deadlock with itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.audit.service import AUDIT_LOCK
from alliance.db import named_lock
from alliance.notify.models import Event, EventRecipient
from alliance.notify.topics import TOPICS

#: The capability whose holders are a hospital's administrators (alliance.security.models.Role).
ADMINISTER = "administer"


@dataclass(frozen=True)
class Recipient:
    """Who an event concerns, at one hospital: the hospital as a whole, one person there (their
    Practitioner id), or the holders of a capability there (`ADMINISTER`)."""

    hospital_id: str
    practitioner_id: str | None = None
    capability: str | None = None


class Acting(Protocol):
    """Who made the change an event is about (a request's actor, or the audit trail's)."""

    @property
    def username(self) -> str: ...


class Reader(Protocol):
    """Who reads events (alliance.security.access.Principal is one)."""

    @property
    def kind(self) -> str: ...

    @property
    def hospital_id(self) -> str: ...

    @property
    def practitioner_id(self) -> str | None: ...

    @property
    def capabilities(self) -> frozenset[str]: ...


def record(
    session: Session,
    kind: str,
    *,
    focus: tuple[str, str],
    recipients: Iterable[Recipient],
    patient_id: str | None = None,
    task_id: str | None = None,
    actor: Acting | None = None,
    key: str | None = None,
) -> Event | None:
    """Record an event in the caller's transaction (it commits or rolls back with the change).

    `key` names an event the server raises on a schedule (`consult-reminder:<appt>:24h`): if
    one with that key exists it is not recorded again and None is returned."""
    if kind not in TOPICS:
        raise ValueError(f"no topic {kind!r}")
    wanted = list(dict.fromkeys(r for r in recipients if r.hospital_id))
    if not wanted:
        return None
    named_lock(session, AUDIT_LOCK)
    if key is not None and session.scalar(select(Event.id).where(Event.key == key)) is not None:
        return None
    event = Event(
        kind=kind,
        at=clock.now(),
        focus_type=focus[0],
        focus_id=focus[1],
        patient_id=patient_id,
        task_id=task_id,
        actor=actor.username if actor is not None else None,
        key=key,
    )
    event.recipients = [
        EventRecipient(
            hospital_id=r.hospital_id, practitioner_id=r.practitioner_id, capability=r.capability
        )
        for r in wanted
    ]
    session.add(event)
    session.flush()
    return event


def concerns(reader: Reader) -> Select[int]:
    """The events `reader` may see, as a query of their numbers (the rule, in SQL).

    A partner system (kind `client`) hears every event naming its hospital. A person hears the
    events naming their hospital as a whole, naming them, or naming a capability they hold
    (overdue referrals name the administrators)."""
    mine = EventRecipient.hospital_id == reader.hospital_id
    if reader.kind != "client":
        whom = [and_(EventRecipient.practitioner_id.is_(None), EventRecipient.capability.is_(None))]
        if reader.practitioner_id:
            whom.append(EventRecipient.practitioner_id == reader.practitioner_id)
        if reader.capabilities:
            whom.append(EventRecipient.capability.in_(sorted(reader.capabilities)))
        mine = and_(mine, or_(*whom))
    return select(EventRecipient.event_id).where(mine)


def events_for(
    session: Session,
    reader: Reader,
    *,
    after: int = 0,
    limit: int = 100,
    kinds: Sequence[str] | None = None,
    since: datetime | None = None,
    not_by: str | None = None,
    newest_first: bool = False,
) -> list[Event]:
    """The events `reader` may see with a number above `after`, oldest first (or newest first),
    at most `limit` (optionally only of `kinds`, only recorded at or after `since`, and only
    those not caused by the user `not_by`: a person is not told what they did themselves)."""
    query = (
        visible_events(reader, after=after, not_by=not_by)
        .order_by(Event.id.desc() if newest_first else Event.id)
        .limit(limit)
    )
    if kinds is not None:
        query = query.where(Event.kind.in_(list(kinds)))
    if since is not None:
        query = query.where(Event.at >= since)
    return list(session.scalars(query))


def visible_events(reader: Reader, *, after: int = 0, not_by: str | None = None) -> Select[Any]:
    """The query of the events `reader` may see after number `after` (see `events_for`)."""
    query = select(Event).where(
        Event.id > after,
        exists(concerns(reader).where(EventRecipient.event_id == Event.id)),
    )
    if not_by is not None:
        query = query.where(or_(Event.actor.is_(None), Event.actor != not_by))
    return query


def last_event_number(session: Session) -> int:
    """The number of the newest committed event (0 when there is none)."""
    return int(session.scalar(select(func.max(Event.id))) or 0)
