"""The imaging index: one row per study, series and instance (PS3.3 A.1.2 information model).

It holds what QIDO-RS matches and returns (PS3.18 10.6), the counts and sizes, and for each
instance the content-addressed blob key and SHA-256 of its bytes in the blob store. Each
instance also keeps its WADO-RS metadata (DICOM JSON, PS3.18 F.2) compressed, built once at
ingest; each series keeps the gzip of its instances' metadata as one JSON array, rebuilt when
the series changes, so `/metadata` of a large series is one row read.

UIDs are global (PS3.5 9.1): a study belongs to the hospital that first stored it. A study
whose patient could not be matched has `patient_id` NULL ("held for reconciliation") and no
FHIR ImagingStudy until it is linked; see `imaging.service`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alliance.db import Base, UTCDateTime
from alliance.fhir.models import ID_LEN

UID_LEN = 64
#: A PN value holds up to three component groups of 64 characters each, plus separators.
PN_LEN = 200


class Study(Base):
    __tablename__ = "imaging_study"

    study_uid: Mapped[str] = mapped_column(String(UID_LEN), primary_key=True)
    #: The hospital that stored it first: it owns the study (and its ImagingStudy).
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    #: The Patient it is linked to; NULL while held for reconciliation.
    patient_id: Mapped[str | None] = mapped_column(String(ID_LEN), index=True)
    #: Whether the FHIR ImagingStudy lags behind the index (refreshed at the end of a batch).
    fhir_stale: Mapped[bool] = mapped_column(default=False)

    # Patient module attributes as received (decoded from the Specific Character Set).
    patient_name: Mapped[str | None] = mapped_column(String(PN_LEN))
    #: Case- and accent-folded component groups of PatientName, for QIDO matching.
    name_alphabetic: Mapped[str | None] = mapped_column(String(PN_LEN))
    name_ideographic: Mapped[str | None] = mapped_column(String(PN_LEN))
    name_phonetic: Mapped[str | None] = mapped_column(String(PN_LEN))
    dicom_patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))

    # General Study module.
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(200))
    referring_physician_name: Mapped[str | None] = mapped_column(String(PN_LEN))
    #: Offset of the study's local time from UTC (0008,0201), e.g. "+0800", when given.
    timezone_offset: Mapped[str | None] = mapped_column(String(8))

    #: ModalitiesInStudy (0008,0061), backslash-separated, kept in step with the series.
    modalities: Mapped[str] = mapped_column(String(200), default="")
    number_of_series: Mapped[int] = mapped_column(Integer, default=0)
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    updated: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        # QIDO's default order and date-range matching.
        Index("ix_imaging_study_date", "study_date", "study_time", "study_uid"),
        # varchar_pattern_ops lets PostgreSQL use them for the prefix LIKE of name matching.
        Index(
            "ix_imaging_study_name_alphabetic",
            "name_alphabetic",
            postgresql_ops={"name_alphabetic": "varchar_pattern_ops"},
        ),
        Index(
            "ix_imaging_study_name_ideographic",
            "name_ideographic",
            postgresql_ops={"name_ideographic": "varchar_pattern_ops"},
        ),
    )


class Series(Base):
    __tablename__ = "imaging_series"

    series_uid: Mapped[str] = mapped_column(String(UID_LEN), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("imaging_study.study_uid"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(200))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_date: Mapped[str | None] = mapped_column(String(8))
    series_time: Mapped[str | None] = mapped_column(String(16))
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: gzip of the JSON array of the instances' metadata (PS3.18 10.4.1.2); NULL when stale.
    metadata_gz: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: Strong validator of `metadata_gz` (ETag), and the DICOMweb base its URIs were built for.
    metadata_etag: Mapped[str | None] = mapped_column(String(64))
    metadata_base: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(UTCDateTime())


class Instance(Base):
    __tablename__ = "imaging_instance"

    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LEN), primary_key=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("imaging_series.series_uid"))
    study_uid: Mapped[str] = mapped_column(String(UID_LEN), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LEN), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LEN))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    #: The PS3.10 file in the blob store: content-addressed key, SHA-256 (hex) and size.
    blob_key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: zlib of this instance's DICOM JSON (bulk data as BulkDataURI, see imaging.dicom).
    metadata_z: Mapped[bytes] = mapped_column(LargeBinary)
    #: Where each frame's bytes are in the blob, as JSON: per frame, a list of
    #: [offset, length] (imaging.dicom.frame_ranges). NULL when a frame cannot be cut out of
    #: the file, and for instances indexed before it was recorded: those frames are served
    #: from the whole file.
    frame_ranges: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_imaging_instance_series", "series_uid", "instance_number"),
        Index("ix_imaging_instance_blob", "blob_key"),
    )
