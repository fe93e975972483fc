"""Typed tables of the teleconsult domain.

The FHIR resources (HealthcareService for a hospital's working calendar, Schedule for a
specialist's consult templates, Appointment for a booking) are kept as accepted JSON by the
generic store; these tables hold what slot derivation reads in SQL, and the one invariant the
database itself must hold: **a person is never booked twice at the same time**.

How the database holds it, on SQLite and PostgreSQL alike: every booking that holds time
(a live hold, a booking, a consult under way) writes one `Occupancy` row per 5-minute cell it
covers, for the specialist (by Practitioner: the person, whatever role or hospital they book
under) and for the patient. The primary key (party, party_id, cell) makes any two overlapping
bookings of one person collide on at least one cell, so the second insert fails inside the
database whatever the application checked before (two API workers, two processes, a race
between the check and the insert). An appointment's start and end are its slots', and
templates start, end and cut slots on multiples of `GRAIN_MINUTES` (the service refuses
others), which is what makes "share a cell" equal to "overlap".

Why not an exclusion constraint: PostgreSQL's `EXCLUDE USING gist (tstzrange(...) WITH &&)`
would do it with one row per booking, but SQLite (the embedded default) has neither range
types nor exclusion constraints. One design that both engines enforce identically means one
code path, one error, and the same tests on both. The cost is a few rows per booking (a 30
minute consult is 6 cells per person) and deleting them when the time is freed.

When a booking stops holding time (cancelled, declined, a no-show, an expired hold reclaimed)
its cells are deleted; the `Booking` row and every version of the Appointment keep the
history. An expired hold keeps its cells until the next booking that needs them reclaims them
in its own transaction (no background job); everything that reads availability treats an
expired hold as free.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from alliance.db import Base, UTCDateTime
from alliance.fhir.models import ID_LEN

#: Bookings start and end on multiples of this many minutes; occupancy cells are this long.
GRAIN_MINUTES = 5
#: Booking states that hold time (a hold holds it only until it expires).
HOLDING = ("pending", "booked", "arrived")


class Calendar(Base):
    """A hospital's teleconsult working calendar: its time zone (a Xinyuan site keeps
    Asia/Shanghai or Asia/Urumqi hours), from its HealthcareService."""

    __tablename__ = "teleconsult_calendar"

    hospital_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(ID_LEN), unique=True)
    time_zone: Mapped[str] = mapped_column(String(64))


class WorkingHours(Base):
    """One opening of a hospital on a weekday, in minutes after local midnight."""

    __tablename__ = "teleconsult_working_hours"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(
        ForeignKey("teleconsult_calendar.hospital_id", ondelete="CASCADE"), index=True
    )
    #: ISO weekday: 1 Monday ... 7 Sunday.
    weekday: Mapped[int] = mapped_column(Integer)
    opens: Mapped[int] = mapped_column(Integer)
    closes: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("weekday BETWEEN 1 AND 7", name="weekday"),
        CheckConstraint("opens >= 0 AND opens < closes AND closes <= 1440", name="hours"),
    )


class Closure(Base):
    """A holiday or one-off closure of a hospital, as the instants it covers."""

    __tablename__ = "teleconsult_closure"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(
        ForeignKey("teleconsult_calendar.hospital_id", ondelete="CASCADE"), index=True
    )
    starts: Mapped[datetime] = mapped_column(UTCDateTime())
    ends: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(String(255))


class ConsultSchedule(Base):
    """A specialist's consult Schedule: whose (the PractitionerRole and its Practitioner, at
    which hospital), whether active, and its planning horizon."""

    __tablename__ = "teleconsult_schedule"

    schedule_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    #: One consult schedule per role: slots of one person in one role cannot come from two.
    practitioner_role_id: Mapped[str] = mapped_column(String(ID_LEN), unique=True)
    practitioner_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    active: Mapped[bool] = mapped_column(default=True)
    horizon_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    horizon_end: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ScheduleTemplate(Base):
    """A recurring consult session of a schedule: on a weekday, from `starts` to `ends`
    (minutes after midnight in the hospital's zone), cut into slots of `slot_minutes`."""

    __tablename__ = "teleconsult_template"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(
        ForeignKey("teleconsult_schedule.schedule_id", ondelete="CASCADE"), index=True
    )
    weekday: Mapped[int] = mapped_column(Integer)
    starts: Mapped[int] = mapped_column(Integer)
    ends: Mapped[int] = mapped_column(Integer)
    slot_minutes: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("weekday BETWEEN 1 AND 7", name="weekday"),
        CheckConstraint("starts >= 0 AND starts < ends AND ends <= 1440", name="hours"),
        CheckConstraint("slot_minutes > 0", name="slot_minutes"),
    )


class Booking(Base):
    """One Appointment of a teleconsult: who, when, its state, its hold, its video room."""

    __tablename__ = "teleconsult_booking"

    appointment_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    service_request_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    task_id: Mapped[str] = mapped_column(String(ID_LEN))
    schedule_id: Mapped[str] = mapped_column(String(ID_LEN))
    practitioner_role_id: Mapped[str] = mapped_column(String(ID_LEN))
    practitioner_id: Mapped[str] = mapped_column(String(ID_LEN))
    specialist_hospital: Mapped[str] = mapped_column(String(ID_LEN))
    requesting_hospital: Mapped[str] = mapped_column(String(ID_LEN))
    patient_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    starts: Mapped[datetime] = mapped_column(UTCDateTime())
    ends: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The Appointment's status: pending (held), booked, arrived, fulfilled, cancelled, noshow.
    status: Mapped[str] = mapped_column(String(16))
    hold_expires: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The video room's id: random, unguessable, shown to participants only.
    room_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: The specialist's answer (AppointmentResponse): needs-action, accepted, declined, ...
    specialist_response: Mapped[str] = mapped_column(String(16))
    encounter_id: Mapped[str | None] = mapped_column(String(ID_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    booked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_teleconsult_booking_practitioner_starts", "practitioner_id", "starts"),
        Index("ix_teleconsult_booking_starts", "starts"),
    )


class Occupancy(Base):
    """One 5-minute cell of a person's time held by a booking (see the module docstring)."""

    __tablename__ = "teleconsult_occupancy"

    #: `practitioner` (the specialist) or `patient`.
    party: Mapped[str] = mapped_column(String(16), primary_key=True)
    party_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    cell: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    appointment_id: Mapped[str] = mapped_column(
        ForeignKey("teleconsult_booking.appointment_id"), index=True
    )
