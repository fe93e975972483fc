"""Typed tables where the database must hold the referral's invariants: the workflow state
(moved under a row lock, so two specialists cannot both accept). Uploaded files are the
kernel's (alliance.attachments)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from alliance.db import Base, UTCDateTime
from alliance.fhir.models import ID_LEN


class Referral(Base):
    """The workflow of one referral (or teleconsult request): its Task's state and times."""

    __tablename__ = "referral"

    task_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    service_request_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    patient_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    #: up-referral, down-referral or teleconsult (the ServiceRequest's category).
    category: Mapped[str] = mapped_column(String(32))
    #: The hospital that sent it and the one asked to take it.
    placer_org: Mapped[str] = mapped_column(String(ID_LEN))
    owner_org: Mapped[str] = mapped_column(String(ID_LEN))
    priority: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    #: The state a referral on hold returns to.
    held_from: Mapped[str | None] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(String(255))
    status_reason_code: Mapped[str | None] = mapped_column(String(64))
    #: When the owner must have accepted or declined by (from the priority).
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rejected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_referral_owner_status", "owner_org", "status", "deadline"),
        Index("ix_referral_placer_status", "placer_org", "status"),
        Index("ix_referral_requested", "requested_at"),
    )
