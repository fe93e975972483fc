"""The outbox (issue 14): one row per event, written in the transaction of the change that
causes it, and who it concerns."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from alliance.db import Base, UTCDateTime
from alliance.fhir.models import ID_LEN, TYPE_LEN

#: SQLite gives monotonic numbers only to an INTEGER PRIMARY KEY AUTOINCREMENT; PostgreSQL a
#: bigint identity.
EventNumber = BigInteger().with_variant(Integer(), "sqlite")


class Event(Base):
    """Something happened that someone must hear of. Its number (`id`) grows with commit order
    (alliance.notify.outbox.record), so "every event after N" is a complete answer.

    It carries no clinical text: the kind, when, the record it is about (`focus`), the patient
    (an id, for access checks) and the referral it belongs to. What a recipient reads of the
    records themselves it reads through the store, under the sharing rules."""

    __tablename__ = "notify_event"

    id: Mapped[int] = mapped_column(EventNumber, primary_key=True, autoincrement=True)
    #: A topic code of alliance.notify.topics (referral-sent, opinion-signed, ...).
    kind: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    focus_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    focus_id: Mapped[str] = mapped_column(String(ID_LEN))
    patient_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    #: The referral (its Task) the event belongs to, when it belongs to one.
    task_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    #: Who caused it: a username, or None for the server (a deadline, a reminder).
    actor: Mapped[str | None] = mapped_column(String(64))
    #: Set for events the server raises on a schedule (a reminder, an overdue referral), so
    #: that raising one twice (two workers, a restart) records it once.
    key: Mapped[str | None] = mapped_column(String(160), unique=True)

    recipients: Mapped[list[EventRecipient]] = relationship(
        back_populates="event", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_notify_event_focus", "focus_type", "focus_id"),
        {"sqlite_autoincrement": True},
    )


class EventRecipient(Base):
    """One party an event concerns: a hospital as a whole (no practitioner, no capability), a
    person at a hospital (their Practitioner), or the holders of a capability there
    (`administer`: the hospital's administrators)."""

    __tablename__ = "notify_event_recipient"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("notify_event.id", ondelete="CASCADE"))
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN))
    practitioner_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    capability: Mapped[str | None] = mapped_column(String(32))

    event: Mapped[Event] = relationship(back_populates="recipients")

    __table_args__ = (
        Index("ix_notify_event_recipient_hospital", "hospital_id", "event_id"),
        Index("ix_notify_event_recipient_event", "event_id"),
    )


class Subscription(Base):
    """The delivery state of one FHIR Subscription (its resource is kept by the FHIR store):
    who it delivers for, where, and how far it has got. The worker moves it under a lease
    (`leased_until`), so one subscription is delivered by one worker at a time, in order."""

    __tablename__ = "notify_subscription"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    #: Who subscribed: what they may see decides what is delivered (alliance.notify.outbox).
    reader_kind: Mapped[str] = mapped_column(String(16))
    reader_name: Mapped[str] = mapped_column(String(64))
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    practitioner_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    capabilities: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[str] = mapped_column(Text)
    topic: Mapped[str] = mapped_column(String(40))
    #: rest-hook (delivered by the worker) or websocket (streamed by the socket's process).
    channel: Mapped[str] = mapped_column(String(16), default="rest-hook")
    #: The rest-hook's URL (empty for a websocket).
    endpoint: Mapped[str] = mapped_column(String(1000))
    #: Headers the receiver asked to be sent (Subscription.channel.header), JSON.
    headers: Mapped[str] = mapped_column(Text, default="[]")
    #: empty, id-only or full-resource (backport-payload-content).
    content: Mapped[str] = mapped_column(String(16))
    heartbeat_seconds: Mapped[int | None] = mapped_column(Integer)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    max_count: Mapped[int] = mapped_column(Integer)
    #: requested (handshake not yet answered), active, error (failing, still retried), off.
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(500))
    #: The last outbox event considered for it, and how many of those were its own: the
    #: number of its last notified event (events-since-subscription-start).
    matched_through: Mapped[int] = mapped_column(EventNumber)
    events_since_start: Mapped[int] = mapped_column(EventNumber, default=0)
    #: The outbox number it started after (its event numbers count from there).
    started_after: Mapped[int] = mapped_column(EventNumber)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_sent: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When a heartbeat is due if nothing else is sent before (None: no heartbeats).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created: Mapped[datetime] = mapped_column(UTCDateTime())

    def sent(self, now: datetime) -> None:
        """Something was sent now: the next heartbeat is due a period later."""
        self.last_sent = now
        self.schedule_heartbeat()

    def schedule_heartbeat(self) -> None:
        since = self.last_sent or self.created
        self.heartbeat_at = (
            since + timedelta(seconds=self.heartbeat_seconds) if self.heartbeat_seconds else None
        )


class DeliveryAttempt(Base):
    """One attempt to deliver a notification: what, how it went (for administrators)."""

    __tablename__ = "notify_attempt"

    id: Mapped[int] = mapped_column(EventNumber, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(String(ID_LEN))
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: handshake, heartbeat or event-notification.
    type: Mapped[str] = mapped_column(String(24))
    #: The subscription's event numbers it carried (first..last), when it carried events.
    first_number: Mapped[int | None] = mapped_column(EventNumber)
    last_number: Mapped[int | None] = mapped_column(EventNumber)
    ok: Mapped[bool] = mapped_column()
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    milliseconds: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_notify_attempt_hospital", "hospital_id", "id"),
        Index("ix_notify_attempt_subscription", "subscription_id", "id"),
        {"sqlite_autoincrement": True},
    )


class PersonNotices(Base):
    """One person's choices for notices beyond the portal (issue 14.4): where (an e-mail
    address, an address at their hospital's SMS / WeChat Work gateway), when not (quiet hours,
    in minutes after midnight of their own time zone), and how far they have read in the
    portal (`seen_through`: the unread count counts events after it)."""

    __tablename__ = "notify_person"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("security_user.id", ondelete="CASCADE"), primary_key=True
    )
    #: Asia/Shanghai (北京时间) or Asia/Urumqi (新疆时间).
    time_zone: Mapped[str] = mapped_column(String(40))
    quiet_start: Mapped[int | None] = mapped_column(Integer)
    quiet_end: Mapped[int | None] = mapped_column(Integer)
    email: Mapped[str | None] = mapped_column(String(254))
    webhook_to: Mapped[str | None] = mapped_column(String(128))
    seen_through: Mapped[int] = mapped_column(EventNumber, default=0)


class PersonChannel(Base):
    """The delivery state of one channel a person chose (a row while chosen): the last outbox
    event considered for it (`through`, moved only once the channel took the message), and
    retries under a lease, as alliance.notify.worker keeps them for subscriptions."""

    __tablename__ = "notify_person_channel"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("security_user.id", ondelete="CASCADE"), primary_key=True
    )
    #: email or webhook (alliance.notify.channels).
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    through: Mapped[int] = mapped_column(EventNumber)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(String(500))
    last_sent: Mapped[datetime | None] = mapped_column(UTCDateTime())
