"""referral

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-29 16:48:20.970436
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import alliance.db

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "referral",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("service_request_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("placer_org", sa.String(length=64), nullable=False),
        sa.Column("owner_org", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("held_from", sa.String(length=16), nullable=True),
        sa.Column("status_reason", sa.String(length=255), nullable=True),
        sa.Column("status_reason_code", sa.String(length=64), nullable=True),
        sa.Column("deadline", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("requested_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("received_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("accepted_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("rejected_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("completed_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("ended_at", alliance.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_referral")),
    )
    with op.batch_alter_table("referral", schema=None) as batch_op:
        batch_op.create_index(
            "ix_referral_owner_status", ["owner_org", "status", "deadline"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_referral_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index("ix_referral_placer_status", ["placer_org", "status"], unique=False)
        batch_op.create_index("ix_referral_requested", ["requested_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_referral_service_request_id"), ["service_request_id"], unique=False
        )

    op.create_table(
        "referral_attachment",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("blob_key", sa.String(length=160), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=True),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        sa.Column("created", alliance.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_attachment")),
    )


def downgrade() -> None:

    op.drop_table("referral_attachment")
    with op.batch_alter_table("referral", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referral_service_request_id"))
        batch_op.drop_index("ix_referral_requested")
        batch_op.drop_index("ix_referral_placer_status")
        batch_op.drop_index(batch_op.f("ix_referral_patient_id"))
        batch_op.drop_index("ix_referral_owner_status")

    op.drop_table("referral")
