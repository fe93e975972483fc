"""A teleconsult's events for the outbox (alliance.notify): booked, reminded, started, the
opinion signed or amended. Each concerns the two hospitals of the consult and the specialist;
none carries clinical text."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, literal, select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.notify.models import Event
from alliance.notify.outbox import Acting, Recipient, record
from teleconsult.models import Booking

#: Reminders before a booked consult starts (issue 14: 24 hours and 15 minutes before), by the
#: suffix of their key.
REMINDERS = (("24h", timedelta(hours=24)), ("15m", timedelta(minutes=15)))


def consult_recipients(booking: Booking) -> list[Recipient]:
    """Both hospitals of a consult, and the specialist by name."""
    return [
        Recipient(booking.requesting_hospital),
        Recipient(booking.specialist_hospital),
        Recipient(booking.specialist_hospital, practitioner_id=booking.practitioner_id),
    ]


def record_consult_event(
    session: Session,
    kind: str,
    booking: Booking,
    focus: tuple[str, str],
    *,
    actor: Acting | None,
    key: str | None = None,
) -> None:
    """Record `kind` about `focus` of the consult `booking` in the caller's transaction."""
    record(
        session,
        kind,
        focus=focus,
        recipients=consult_recipients(booking),
        patient_id=booking.patient_id,
        task_id=booking.task_id,
        actor=actor,
        key=key,
    )


def record_reminders(session: Session) -> int:
    """The reminders now due: each booked consult starting within 24 hours (and within 15
    minutes) is reminded of once per reminder, whoever raises it first (the worker's scheduler;
    the key makes a second attempt record nothing). A consult booked inside a reminder's window
    gets no such reminder: its booking was the notice. Returns how many were recorded."""
    now = clock.now()
    recorded = 0
    for suffix, ahead in REMINDERS:
        key = literal("consult-reminder:") + Booking.appointment_id + literal(f":{suffix}")
        due = session.scalars(
            select(Booking)
            .where(
                Booking.status == "booked",
                Booking.starts > now,
                Booking.starts <= now + ahead,
                ~exists().where(Event.key == key),
            )
            .order_by(Booking.starts)
        ).all()
        for booking in due:
            if booking.booked_at is not None and booking.starts - booking.booked_at <= ahead:
                continue
            event = record(
                session,
                "consult-reminder",
                focus=("Appointment", booking.appointment_id),
                recipients=consult_recipients(booking),
                patient_id=booking.patient_id,
                task_id=booking.task_id,
                key=f"consult-reminder:{booking.appointment_id}:{suffix}",
            )
            recorded += event is not None
    return recorded
