"""notices to people: each person's channels, quiet hours and time zone, how far they have read,
and each chosen channel's delivery state (issue 14.4)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

EVENT_NUMBER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notify_person",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("time_zone", sa.String(length=40), nullable=False),
        sa.Column("quiet_start", sa.Integer(), nullable=True),
        sa.Column("quiet_end", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("webhook_to", sa.String(length=128), nullable=True),
        sa.Column("seen_through", EVENT_NUMBER, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["security_user.id"],
            name=op.f("fk_notify_person_user_id_security_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_notify_person")),
    )
    op.create_table(
        "notify_person_channel",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("through", EVENT_NUMBER, nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("last_sent", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["security_user.id"],
            name=op.f("fk_notify_person_channel_user_id_security_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "channel", name=op.f("pk_notify_person_channel")),
    )
    op.create_index(
        op.f("ix_notify_person_channel_next_attempt"), "notify_person_channel", ["next_attempt"]
    )


def downgrade() -> None:
    op.drop_table("notify_person_channel")
    op.drop_table("notify_person")
