"""fhir resource store and directory

Revision ID: 0001
Revises:
Create Date: 2026-11-29 16:17:51.900920
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import alliance.db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "directory_patient_identity",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("identity_number", sa.String(length=18), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_directory_patient_identity")),
        sa.UniqueConstraint(
            "organization_id",
            "identity_number",
            name=op.f("uq_directory_patient_identity_organization_id_identity_number"),
        ),
    )
    op.create_table(
        "fhir_idx_date",
        sa.Column("low", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("high", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_fhir_idx_date")),
    )
    with op.batch_alter_table("fhir_idx_date", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_date_lookup", ["resource_type", "param", "low"], unique=False
        )
        batch_op.create_index(
            "ix_fhir_idx_date_owner", ["resource_type", "resource_id"], unique=False
        )

    op.create_table(
        "fhir_idx_reference",
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_fhir_idx_reference")),
    )
    with op.batch_alter_table("fhir_idx_reference", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_reference_lookup", ["resource_type", "param", "target_id"], unique=False
        )
        batch_op.create_index(
            "ix_fhir_idx_reference_owner", ["resource_type", "resource_id"], unique=False
        )

    op.create_table(
        "fhir_idx_string",
        sa.Column("norm", sa.String(length=255), nullable=False),
        sa.Column("exact", sa.String(length=1024), nullable=True),
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_fhir_idx_string")),
    )
    with op.batch_alter_table("fhir_idx_string", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_string_lookup",
            ["resource_type", "param", "norm"],
            unique=False,
            postgresql_ops={"norm": "varchar_pattern_ops"},
        )
        batch_op.create_index(
            "ix_fhir_idx_string_owner", ["resource_type", "resource_id"], unique=False
        )

    op.create_table(
        "fhir_idx_token",
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=False),
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_fhir_idx_token")),
    )
    with op.batch_alter_table("fhir_idx_token", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_token_lookup", ["resource_type", "param", "code", "system"], unique=False
        )
        batch_op.create_index(
            "ix_fhir_idx_token_owner", ["resource_type", "resource_id"], unique=False
        )

    op.create_table(
        "fhir_resource",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("resource_type", "id", name=op.f("pk_fhir_resource")),
    )
    with op.batch_alter_table("fhir_resource", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fhir_resource_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_fhir_resource_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            "ix_fhir_resource_type_updated", ["resource_type", "last_updated"], unique=False
        )

    op.create_table(
        "fhir_resource_version",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["resource_type", "id"],
            ["fhir_resource.resource_type", "fhir_resource.id"],
            name=op.f("fk_fhir_resource_version_resource_type_fhir_resource"),
        ),
        sa.PrimaryKeyConstraint(
            "resource_type", "id", "version", name=op.f("pk_fhir_resource_version")
        ),
    )


def downgrade() -> None:

    op.drop_table("fhir_resource_version")
    with op.batch_alter_table("fhir_resource", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_resource_type_updated")
        batch_op.drop_index(batch_op.f("ix_fhir_resource_patient_id"))
        batch_op.drop_index(batch_op.f("ix_fhir_resource_organization_id"))

    op.drop_table("fhir_resource")
    with op.batch_alter_table("fhir_idx_token", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_token_owner")
        batch_op.drop_index("ix_fhir_idx_token_lookup")

    op.drop_table("fhir_idx_token")
    with op.batch_alter_table("fhir_idx_string", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_string_owner")
        batch_op.drop_index(
            "ix_fhir_idx_string_lookup", postgresql_ops={"norm": "varchar_pattern_ops"}
        )

    op.drop_table("fhir_idx_string")
    with op.batch_alter_table("fhir_idx_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_reference_owner")
        batch_op.drop_index("ix_fhir_idx_reference_lookup")

    op.drop_table("fhir_idx_reference")
    with op.batch_alter_table("fhir_idx_date", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_date_owner")
        batch_op.drop_index("ix_fhir_idx_date_lookup")

    op.drop_table("fhir_idx_date")
    op.drop_table("directory_patient_identity")
