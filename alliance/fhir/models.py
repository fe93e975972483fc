"""Tables that keep FHIR resources: every version as the JSON accepted, plus search indexes.

The current version of a resource is a row in `fhir_resource`; every version, including the
current one, is a row in `fhir_resource_version` with its JSON. Search parameters are indexed in
one table per parameter type, for the current version only, so a search is SQL, not a scan.
`patient_id` and `organization_id` on the resource row are what access rules filter on: the
patient whose record this is (its compartment) and the hospital that owns it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKeyConstraint, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alliance.db import Base, UTCDateTime

ID_LEN = 64
TYPE_LEN = 64


class ResourceRow(Base):
    __tablename__ = "fhir_resource"

    resource_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted: Mapped[bool] = mapped_column(default=False)
    patient_id: Mapped[str | None] = mapped_column(String(ID_LEN), index=True)
    organization_id: Mapped[str | None] = mapped_column(String(ID_LEN), index=True)

    __table_args__ = (Index("ix_fhir_resource_type_updated", "resource_type", "last_updated"),)


class ResourceVersion(Base):
    __tablename__ = "fhir_resource_version"

    resource_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime())
    #: create, update or delete (FHIR Bundle.entry.request.method of the history entry).
    method: Mapped[str] = mapped_column(String(8))
    #: The resource JSON as accepted, with meta.versionId/lastUpdated set; None for a delete.
    content: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        ForeignKeyConstraint(
            ["resource_type", "id"], ["fhir_resource.resource_type", "fhir_resource.id"]
        ),
    )


class _IndexRow:
    """Columns every search-index row has: which resource, which parameter."""

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    resource_id: Mapped[str] = mapped_column(String(ID_LEN))
    param: Mapped[str] = mapped_column(String(64))


class TokenIndex(_IndexRow, Base):
    __tablename__ = "fhir_idx_token"
    system: Mapped[str | None] = mapped_column(String(255))
    code: Mapped[str] = mapped_column(String(255))
    __table_args__ = (
        Index("ix_fhir_idx_token_lookup", "resource_type", "param", "code", "system"),
        Index("ix_fhir_idx_token_owner", "resource_type", "resource_id"),
    )


class StringIndex(_IndexRow, Base):
    __tablename__ = "fhir_idx_string"
    #: Case- and accent-folded form, for the default (starts-with) and :contains matches.
    norm: Mapped[str] = mapped_column(String(255))
    #: The value exactly as written, for :exact; None for a part derived from a value.
    exact: Mapped[str | None] = mapped_column(String(1024))
    __table_args__ = (
        # varchar_pattern_ops lets PostgreSQL use the index for the prefix LIKE of string search.
        Index(
            "ix_fhir_idx_string_lookup",
            "resource_type",
            "param",
            "norm",
            postgresql_ops={"norm": "varchar_pattern_ops"},
        ),
        Index("ix_fhir_idx_string_owner", "resource_type", "resource_id"),
    )


class ReferenceIndex(_IndexRow, Base):
    __tablename__ = "fhir_idx_reference"
    target_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    target_id: Mapped[str] = mapped_column(String(ID_LEN))
    __table_args__ = (
        Index("ix_fhir_idx_reference_lookup", "resource_type", "param", "target_id"),
        Index("ix_fhir_idx_reference_owner", "resource_type", "resource_id"),
    )


class DateIndex(_IndexRow, Base):
    __tablename__ = "fhir_idx_date"
    #: The value as the instant range it covers: 1990-01 is [1990-01-01T00:00, 1990-02-01T00:00).
    low: Mapped[datetime] = mapped_column(UTCDateTime())
    high: Mapped[datetime] = mapped_column(UTCDateTime())
    __table_args__ = (
        Index("ix_fhir_idx_date_lookup", "resource_type", "param", "low"),
        Index("ix_fhir_idx_date_owner", "resource_type", "resource_id"),
    )


class IndexState(Base):
    """Which version of the indexing rules (alliance.fhir.reindex.INDEX_VERSION) built the
    search index: one row. When the rules change, the index is rebuilt once, on upgrade."""

    __tablename__ = "fhir_index_state"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
