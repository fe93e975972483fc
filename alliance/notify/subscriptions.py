"""FHIR Subscriptions, topic-based, as the R4 Subscriptions Backport IG (STU 1.1,
http://hl7.org/fhir/uv/subscriptions-backport) shapes them: a `Subscription` whose `criteria` is
a topic's canonical URL (alliance.notify.topics), a `rest-hook` channel, the payload content
(`empty`, `id-only`, `full-resource`) in the backport-payload-content extension, heartbeat,
timeout and max-count extensions; notifications are `history` Bundles led by a
SubscriptionStatus (in R4 a Parameters resource, profile backport-subscription-status-r4).

A subscription delivers for whoever made it: only the events their hospital (or they) may see
(alliance.notify.outbox.concerns), and a resource in full only where they may read it. Its
status is the server's: `requested` until the handshake is answered, then `active`; `error`
while deliveries fail (they are retried, nothing is dropped); `off` when the subscriber turns it
off (update with status off; a Subscription is not deleted, so its event numbers stay).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.audit.service import AUDIT_LOCK
from alliance.db import named_lock
from alliance.errors import Forbidden, Invalid, NotFound
from alliance.fhir.registry import OperationContext, OperationResult, Resource, WriteContext
from alliance.fhir.types import Version
from alliance.fhir.values import instant
from alliance.notify.models import Event, EventRecipient, Subscription
from alliance.notify.outbox import concerns, last_event_number
from alliance.notify.topics import ALL, EVENT_KIND, TOPICS, topic_by_url
from alliance.records import stamp_keeper
from alliance.security.access import Principal, visibility
from alliance.security.models import Client, User
from alliance.security.scopes import parse_scopes

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/backport-subscription"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
NOTIFICATION_PROFILE = f"{BACKPORT}/backport-subscription-notification-r4"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
TIMEOUT = f"{BACKPORT}/backport-timeout"
MAX_COUNT = f"{BACKPORT}/backport-max-count"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
CONTENTS = ("empty", "id-only", "full-resource")
CHANNELS = ("rest-hook", "websocket")
DEFAULT_TIMEOUT, MAX_TIMEOUT = 10, 60
DEFAULT_MAX_COUNT, MAX_MAX_COUNT = 20, 100
MAX_EVENTS_PAGE = 100


def _ext(element: Resource | None, url: str) -> Resource | None:
    for e in (element or {}).get("extension") or []:
        if isinstance(e, dict) and e.get("url") == url:
            return e
    return None


def _whole(element: Resource | None, url: str, low: int, high: int, default: int | None) -> Any:
    found = _ext(element, url)
    if found is None:
        return default
    value = next((v for k, v in found.items() if k.startswith("value")), None)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(
            f"{url.rsplit('/', 1)[-1]} is a whole number from {low} to {high}",
            expression=["Subscription.channel.extension"],
            rule="subscription-channel-setting",
        )
    return value


@dataclass(frozen=True)
class Channel:
    """What a Subscription asks of its channel, checked."""

    topic: str
    #: rest-hook or websocket.
    type: str
    endpoint: str
    headers: list[str]
    content: str
    heartbeat: int | None
    timeout: int
    max_count: int


def read_channel(sub: Resource, allowed: tuple[str, ...] = ()) -> Channel:
    """The Subscription's topic and channel, or the error naming what to correct.

    `allowed` (ALLIANCE_NOTIFY_ENDPOINTS) lists the URL prefixes a rest-hook may name; when
    it is set, any other endpoint is refused, so that a partner's token cannot make the server
    post to addresses inside the hospital network it was never meant to reach (SSRF)."""
    topic = topic_by_url(str(sub.get("criteria") or ""))
    if topic is None:
        raise Invalid(
            "criteria names a topic this server publishes: one of "
            + ", ".join(t.url for t in [*TOPICS.values(), ALL]),
            expression=["Subscription.criteria"],
            rule="subscription-topic",
        )
    if _ext(sub.get("_criteria"), FILTER_CRITERIA) is not None:
        raise Invalid(
            "filter criteria are not supported: a subscription receives every event of its "
            "topic that its hospital may see",
            expression=["Subscription.criteria"],
            rule="subscription-filter",
        )
    channel = sub.get("channel") or {}
    if channel.get("type") not in CHANNELS:
        raise Invalid(
            "the channel type is rest-hook or websocket",
            expression=["Subscription.channel.type"],
            rule="subscription-channel",
        )
    endpoint = str(channel.get("endpoint") or "")
    parts = urlsplit(endpoint)
    websocket = channel["type"] == "websocket"
    if not websocket and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise Invalid(
            "a rest-hook channel's endpoint is an absolute http or https URL",
            expression=["Subscription.channel.endpoint"],
            rule="subscription-endpoint",
        )
    if not websocket and allowed and not any(endpoint.startswith(p) for p in allowed):
        raise Invalid(
            "this server delivers only to the hospital systems its operator listed "
            "(ALLIANCE_NOTIFY_ENDPOINTS); ask the alliance's operator to add this endpoint",
            expression=["Subscription.channel.endpoint"],
            rule="subscription-endpoint-not-allowed",
        )
    headers = [str(h) for h in channel.get("header") or []]
    if any(":" not in h or "\n" in h or "\r" in h for h in headers):
        raise Invalid(
            "each channel header is one 'Name: value' line",
            expression=["Subscription.channel.header"],
            rule="subscription-header",
        )
    content_ext = _ext(channel.get("_payload"), PAYLOAD_CONTENT)
    content = str((content_ext or {}).get("valueCode") or "id-only")
    if content not in CONTENTS:
        raise Invalid(
            f"the payload content is one of {', '.join(CONTENTS)}",
            expression=["Subscription.channel.payload"],
            rule="subscription-content",
        )
    payload = channel.get("payload")
    if content != "empty" and payload not in (None, "application/fhir+json", "application/json"):
        raise Invalid(
            "notifications are sent as application/fhir+json",
            expression=["Subscription.channel.payload"],
            rule="subscription-payload-type",
        )
    return Channel(
        topic=topic.code,
        type=str(channel["type"]),
        endpoint="" if websocket else endpoint,
        headers=headers,
        content=content,
        heartbeat=_whole(channel, HEARTBEAT_PERIOD, 1, 86400, None),
        timeout=_whole(channel, TIMEOUT, 1, MAX_TIMEOUT, DEFAULT_TIMEOUT),
        max_count=_whole(channel, MAX_COUNT, 1, MAX_MAX_COUNT, DEFAULT_MAX_COUNT),
    )


class SubscriptionRules:
    """The hooks of the Subscription type. `allowed_endpoints`: see `read_channel`."""

    def __init__(self, allowed_endpoints: tuple[str, ...] = ()) -> None:
        self.allowed_endpoints = allowed_endpoints

    def prepare(self, ctx: WriteContext, sub: Resource, previous: Resource | None) -> None:
        """The status is the server's: a new subscription is `requested` (until its handshake
        is answered); a subscriber may only turn theirs `off`, or ask again (`requested`)."""
        stamp_keeper(ctx, sub, previous)
        if ctx.actor is None:
            return  # the worker moving the status
        asked = sub.get("status")
        if previous is None or asked not in ("off", "requested"):
            sub["status"] = "requested" if previous is None else previous.get("status")
        if previous is None:
            sub.pop("error", None)
        meta = sub.setdefault("meta", {})
        profiles = meta.setdefault("profile", [])
        if SUBSCRIPTION_PROFILE not in profiles:
            profiles.append(SUBSCRIPTION_PROFILE)

    def check(self, ctx: WriteContext, sub: Resource, previous: Resource | None) -> list[Any]:
        read_channel(sub, self.allowed_endpoints)
        if ctx.actor is not None and previous is not None:
            row = ctx.session.get(Subscription, sub["id"])
            if row is not None and read_channel(sub).topic != row.topic:
                raise Invalid(
                    "a subscription's topic does not change (its event numbers count that "
                    "topic's events); subscribe again for another topic",
                    expression=["Subscription.criteria"],
                    rule="subscription-topic-fixed",
                )
        return []

    def after(self, ctx: WriteContext, version: Version, previous: Resource | None) -> None:
        """Keep the delivery state beside the resource."""
        sub = version.resource()
        channel = read_channel(sub)
        row = ctx.session.get(Subscription, version.id)
        now = clock.now()
        if row is None:
            actor = ctx.actor
            if actor is None:
                raise Invalid("a subscription is made by a signed-in user or a partner system")
            # Its events are those committed after this one (numbers follow commit order).
            named_lock(ctx.session, AUDIT_LOCK)
            start = last_event_number(ctx.session)
            row = Subscription(
                id=version.id,
                reader_kind=actor.kind,
                reader_name=actor.username,
                hospital_id=actor.hospital_id,
                practitioner_id=actor.practitioner_id,
                capabilities=" ".join(sorted(actor.capabilities)),
                scopes=" ".join(str(s) for s in actor.scopes),
                topic=channel.topic,
                channel=channel.type,
                status="requested",
                matched_through=start,
                events_since_start=0,
                started_after=start,
                failures=0,
                next_attempt=now,
                created=now,
                endpoint=channel.endpoint,
                headers="[]",
                content=channel.content,
                timeout_seconds=channel.timeout,
                max_count=channel.max_count,
            )
            ctx.session.add(row)
        row.channel = channel.type
        row.endpoint = channel.endpoint
        row.headers = json.dumps(channel.headers)
        row.content = channel.content
        row.heartbeat_seconds = channel.heartbeat
        row.schedule_heartbeat()
        row.timeout_seconds = channel.timeout
        row.max_count = channel.max_count
        if ctx.actor is not None and previous is not None:
            status = sub.get("status")
            if status == "off":
                row.status = "off"
            elif status == "requested" and row.status != "requested":
                row.status, row.failures, row.next_attempt = "requested", 0, now
        ctx.session.flush()


# ---- who reads: the subscriber -------------------------------------------------------------


def subscriber(row: Subscription) -> Principal:
    """The subscriber as a principal, with what they could see and read when they subscribed."""
    return Principal(
        subject=row.reader_name,
        username=row.reader_name,
        kind=row.reader_kind,
        hospital_id=row.hospital_id,
        role="",
        capabilities=frozenset(row.capabilities.split()),
        scopes=tuple(parse_scopes(row.scopes)),
        practitioner_id=row.practitioner_id,
    )


def subscriber_active(session: Session, row: Subscription) -> bool:
    """Whether the account that subscribed may still act: a locked (or removed) person or
    partner system hears nothing more."""
    if row.reader_kind == "client":
        client = session.get(Client, row.reader_name)
        return client is not None and client.active
    user = session.scalar(select(User).where(User.username == row.reader_name))
    return user is not None and user.active


def matching(row: Subscription) -> Select[Event]:
    """The outbox events of the subscription's topic that the subscriber may see."""
    reader = subscriber(row)
    query = (
        select(Event)
        .where(
            Event.id > row.started_after,
            exists(concerns(reader).where(EventRecipient.event_id == Event.id)),
        )
        .order_by(Event.id)
    )
    return query if row.topic == ALL.code else query.where(Event.kind == row.topic)


def pending(session: Session, row: Subscription, through: int) -> list[Event]:
    """The next events (at most max_count) for the subscription, up to outbox number
    `through`."""
    query = matching(row).where(Event.id > row.matched_through, Event.id <= through)
    return list(session.scalars(query.limit(row.max_count)))


# ---- notifications (backport-subscription-notification-r4) ---------------------------------


def status_parameters(
    row: Subscription,
    kind: str,
    fhir_base: str,
    numbered: Sequence[tuple[int, Event]] = (),
    *,
    events_since_start: int | None = None,
) -> Resource:
    """The SubscriptionStatus (R4: Parameters, profile backport-subscription-status-r4)."""
    topic = ALL if row.topic == ALL.code else TOPICS[row.topic]
    params: list[Resource] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{fhir_base}/Subscription/{row.id}"},
        },
        {"name": "topic", "valueCanonical": topic.url},
        {"name": "status", "valueCode": row.status},
        {"name": "type", "valueCode": kind},
        {
            "name": "events-since-subscription-start",
            "valueString": str(
                row.events_since_start if events_since_start is None else events_since_start
            ),
        },
    ]
    for number, event in numbered:
        parts: list[Resource] = [
            {"name": "event-number", "valueString": str(number)},
            {"name": "timestamp", "valueInstant": instant(event.at)},
        ]
        if row.content != "empty":
            parts.append(
                {
                    "name": "focus",
                    "valueReference": {"reference": f"{event.focus_type}/{event.focus_id}"},
                }
            )
            if event.task_id and (event.focus_type, event.focus_id) != ("Task", event.task_id):
                parts.append(
                    {
                        "name": "additional-context",
                        "valueReference": {"reference": f"Task/{event.task_id}"},
                    }
                )
        params.append(
            {
                "name": "notification-event",
                "extension": [{"url": EVENT_KIND, "valueCode": event.kind}],
                "part": parts,
            }
        )
    if row.error and row.status == "error":
        params.append({"name": "error", "valueCodeableConcept": {"text": row.error}})
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    }


def notification_bundle(
    session: Session,
    store: Any,
    row: Subscription,
    kind: str,
    fhir_base: str,
    numbered: Sequence[tuple[int, Event]] = (),
    *,
    bundle_type: str = "history",
    events_since_start: int | None = None,
) -> Resource:
    """A notification (history Bundle: the status first, then the focus of each event): the
    resource in full only with `full-resource` content and where the subscriber may read it
    now (its scope allows reading the type, the sharing rules let its hospital see it);
    otherwise its reference alone."""
    status = status_parameters(
        row, kind, fhir_base, numbered, events_since_start=events_since_start
    )
    entries: list[Resource] = [
        {
            "fullUrl": f"urn:uuid:{_status_uuid(row, numbered, kind)}",
            "resource": status,
            "request": {"method": "GET", "url": f"Subscription/{row.id}/$status"},
            "response": {"status": "200"},
        }
    ]
    if row.content != "empty":
        reader = subscriber(row)
        visible = visibility(reader, store.registry.get) if row.content == "full-resource" else None
        for _number, event in numbered:
            entry: Resource = {
                "fullUrl": f"{fhir_base}/{event.focus_type}/{event.focus_id}",
                "request": {"method": "PUT", "url": f"{event.focus_type}/{event.focus_id}"},
                "response": {"status": "200"},
            }
            if visible is not None:
                found = _readable(session, store, reader, visible, event)
                if found is not None:
                    entry["resource"] = found
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": bundle_type,
        "timestamp": instant(clock.now()),
        "entry": entries,
    }


def _status_uuid(row: Subscription, numbered: Sequence[tuple[int, Event]], kind: str) -> str:
    tail = f"{numbered[0][0]}-{numbered[-1][0]}" if numbered else clock.now().isoformat()
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{row.id}/{kind}/{tail}"))


def _readable(
    session: Session, store: Any, reader: Principal, visible: Any, event: Event
) -> Resource | None:
    try:
        reader.check_scope(event.focus_type, "read")
        found: Version = store.read(
            event.focus_type, event.focus_id, session=session, visible=visible
        )
    except (NotFound, Forbidden):
        return None
    return found.resource()


# ---- $status and $events (catching up) -------------------------------------------------------


def _param(parameters: Resource, name: str) -> str | None:
    for p in parameters.get("parameter") or []:
        if p.get("name") == name:
            for k, v in p.items():
                if k.startswith("value"):
                    return str(v)
    return None


def own_subscription(acting: OperationContext, parameters: Resource) -> Subscription:
    """The subscription named by `id`, if the caller can see it (404 otherwise)."""
    sub_id = _param(parameters, "id")
    if not sub_id:
        raise Invalid("name the subscription: id", rule="subscription-id")
    acting.read("Subscription", sub_id)
    row = acting.session.get(Subscription, sub_id)
    if row is None:
        raise NotFound(f"Subscription/{sub_id} is not known")
    return row


def run_status(acting: OperationContext, parameters: Resource, fhir_base: str) -> OperationResult:
    """`$status` (backport: Subscription/[id]/$status): a searchset Bundle holding the
    subscription's SubscriptionStatus (type query-status)."""
    row = own_subscription(acting, parameters)
    status = status_parameters(row, "query-status", fhir_base)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"resource": status, "search": {"mode": "match"}}],
    }
    return OperationResult(bundle, [(f"Subscription/{row.id}", None)])


def run_events(
    acting: OperationContext, parameters: Resource, store: Any, fhir_base: str
) -> OperationResult:
    """`$events` (backport: Subscription/[id]/$events): the subscription's events by their
    numbers, `eventsSinceNumber` to `eventsUntilNumber` (at most 100), so a receiver that was
    down catches up. Only events already notified (or due) are listed; `content` may narrow
    what the subscription's payload sends (empty, id-only, full-resource)."""
    row = own_subscription(acting, parameters)
    since = _number(_param(parameters, "eventsSinceNumber"), 1)
    until = _number(_param(parameters, "eventsUntilNumber"), since + MAX_EVENTS_PAGE - 1)
    until = min(until, since + MAX_EVENTS_PAGE - 1)
    content = _param(parameters, "content") or row.content
    if content not in CONTENTS:
        raise Invalid(f"content is one of {', '.join(CONTENTS)}", rule="subscription-content")
    through = last_event_number(acting.session)
    events = (
        list(
            acting.session.scalars(
                matching(row).where(Event.id <= through).offset(since - 1).limit(until - since + 1)
            )
        )
        if until >= since
        else []
    )
    numbered = [(since + i, e) for i, e in enumerate(events)]
    viewed = Subscription(**{c.key: getattr(row, c.key) for c in Subscription.__table__.columns})
    if content_rank(content) < content_rank(row.content):
        viewed.content = content
    total = acting.session.scalar(
        select(func.count()).select_from(matching(row).where(Event.id <= through).subquery())
    )
    bundle = notification_bundle(
        acting.session,
        store,
        viewed,
        "query-event",
        fhir_base,
        numbered,
        events_since_start=int(total or 0),
    )
    return OperationResult(bundle, [(f"Subscription/{row.id}", None)])


def content_rank(content: str) -> int:
    return CONTENTS.index(content)


def _number(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise Invalid("event numbers are whole numbers from 1", rule="subscription-event-number")
    return int(value)
