"""Typed directory tables, only where the database must hold an invariant."""

from __future__ import annotations

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from alliance.db import Base
from alliance.fhir.models import ID_LEN


class PatientIdentity(Base):
    """One Patient per identity number within a managing hospital.

    Each hospital keeps its own patient record (as its HIS does); the same person registered at
    two hospitals is two records that share the identity number, which is what referrals and
    imaging match on. The constraint makes concurrent registrations of one person at one
    hospital end in one record.
    """

    __tablename__ = "directory_patient_identity"

    patient_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(ID_LEN))
    identity_number: Mapped[str] = mapped_column(String(18))

    __table_args__ = (UniqueConstraint("organization_id", "identity_number"),)
