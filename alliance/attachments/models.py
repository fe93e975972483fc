"""The uploaded files' table (alliance.attachments.service has the rule for them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from alliance.db import Base, UTCDateTime
from alliance.fhir.models import ID_LEN


class Attachment(Base):
    """An uploaded file kept in the blob store (the table keeps the name it was born with)."""

    __tablename__ = "referral_attachment"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(160))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(100))
    title: Mapped[str | None] = mapped_column(String(255))
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN))
    uploaded_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime())
