"""imaging: the study, series and instance index of DICOM stored through DICOMweb and C-STORE

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:51:37.406585
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import alliance.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imaging_study",
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("fhir_stale", sa.Boolean(), nullable=False),
        sa.Column("patient_name", sa.String(length=200), nullable=True),
        sa.Column("name_alphabetic", sa.String(length=200), nullable=True),
        sa.Column("name_ideographic", sa.String(length=200), nullable=True),
        sa.Column("name_phonetic", sa.String(length=200), nullable=True),
        sa.Column("dicom_patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("study_time", sa.String(length=16), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("study_id", sa.String(length=16), nullable=True),
        sa.Column("study_description", sa.String(length=200), nullable=True),
        sa.Column("referring_physician_name", sa.String(length=200), nullable=True),
        sa.Column("timezone_offset", sa.String(length=8), nullable=True),
        sa.Column("modalities", sa.String(length=200), nullable=False),
        sa.Column("number_of_series", sa.Integer(), nullable=False),
        sa.Column("number_of_instances", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("updated", alliance.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("study_uid", name=op.f("pk_imaging_study")),
    )
    with op.batch_alter_table("imaging_study", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_imaging_study_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(
            "ix_imaging_study_date", ["study_date", "study_time", "study_uid"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_study_dicom_patient_id"), ["dicom_patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_study_hospital_id"), ["hospital_id"], unique=False
        )
        batch_op.create_index(
            "ix_imaging_study_name_alphabetic",
            ["name_alphabetic"],
            unique=False,
            postgresql_ops={"name_alphabetic": "varchar_pattern_ops"},
        )
        batch_op.create_index(
            "ix_imaging_study_name_ideographic",
            ["name_ideographic"],
            unique=False,
            postgresql_ops={"name_ideographic": "varchar_pattern_ops"},
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_study_patient_id"), ["patient_id"], unique=False
        )

    op.create_table(
        "imaging_series",
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=200), nullable=True),
        sa.Column("body_part_examined", sa.String(length=64), nullable=True),
        sa.Column("series_date", sa.String(length=8), nullable=True),
        sa.Column("series_time", sa.String(length=16), nullable=True),
        sa.Column("number_of_instances", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("metadata_gz", sa.LargeBinary(), nullable=True),
        sa.Column("metadata_etag", sa.String(length=64), nullable=True),
        sa.Column("metadata_base", sa.String(length=255), nullable=True),
        sa.Column("created", alliance.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_uid"],
            ["imaging_study.study_uid"],
            name=op.f("fk_imaging_series_study_uid_imaging_study"),
        ),
        sa.PrimaryKeyConstraint("series_uid", name=op.f("pk_imaging_series")),
    )
    with op.batch_alter_table("imaging_series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_imaging_series_modality"), ["modality"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_imaging_series_study_uid"), ["study_uid"], unique=False
        )

    op.create_table(
        "imaging_instance",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("blob_key", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("metadata_z", sa.LargeBinary(), nullable=False),
        sa.Column("created", alliance.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_uid"],
            ["imaging_series.series_uid"],
            name=op.f("fk_imaging_instance_series_uid_imaging_series"),
        ),
        sa.PrimaryKeyConstraint("sop_instance_uid", name=op.f("pk_imaging_instance")),
    )
    with op.batch_alter_table("imaging_instance", schema=None) as batch_op:
        batch_op.create_index("ix_imaging_instance_blob", ["blob_key"], unique=False)
        batch_op.create_index(
            "ix_imaging_instance_series", ["series_uid", "instance_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_instance_sop_class_uid"), ["sop_class_uid"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_instance_study_uid"), ["study_uid"], unique=False
        )


def downgrade() -> None:
    op.drop_table("imaging_instance")
    op.drop_table("imaging_series")
    op.drop_table("imaging_study")
