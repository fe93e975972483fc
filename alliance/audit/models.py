"""The audit table. Rows are appended under a lock, hash-chained, and never updated or deleted
(on PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alliance.db import Base, UTCDateTime
from alliance.fhir.models import ID_LEN


class AuditRecord(Base):
    __tablename__ = "audit_event"

    #: Position in the chain: 1, 2, 3, ... with no gaps.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    #: AuditEvent.id
    id: Mapped[str] = mapped_column(String(36), unique=True)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Columns copied from the AuditEvent for searching; `verify` checks they match it.
    type: Mapped[str] = mapped_column(String(64))
    subtype: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[str] = mapped_column(String(2))
    username: Mapped[str | None] = mapped_column(String(64))
    hospital_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    role: Mapped[str | None] = mapped_column(String(64))
    practitioner_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    client_address: Mapped[str | None] = mapped_column(String(64))
    #: The resource touched, `Type/id`, if one.
    entity: Mapped[str | None] = mapped_column(String(160))
    patient_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    #: The AuditEvent resource as canonical JSON (sorted keys, no spaces): what is hashed.
    content: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_event_recorded", "recorded"),
        Index("ix_audit_event_patient", "patient_id", "recorded"),
        Index("ix_audit_event_username", "username", "recorded"),
        Index("ix_audit_event_entity", "entity"),
    )


AUDIT_COLUMNS = (
    "type",
    "subtype",
    "action",
    "outcome",
    "username",
    "hospital_id",
    "role",
    "practitioner_id",
    "client_address",
    "entity",
    "patient_id",
)
GENESIS_HASH = "0" * 64
