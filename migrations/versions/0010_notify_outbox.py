"""notifications: the outbox of events and who each concerns (issue 14)

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-01 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None

EVENT_NUMBER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notify_event",
        sa.Column("id", EVENT_NUMBER, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("focus_type", sa.String(length=64), nullable=False),
        sa.Column("focus_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("key", sa.String(length=160), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_event")),
        sa.UniqueConstraint("key", name=op.f("uq_notify_event_key")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_notify_event_focus", "notify_event", ["focus_type", "focus_id"])
    op.create_table(
        "notify_event_recipient",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", EVENT_NUMBER, nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("capability", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["notify_event.id"],
            name=op.f("fk_notify_event_recipient_event_id_notify_event"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_event_recipient")),
    )
    op.create_index(
        "ix_notify_event_recipient_hospital",
        "notify_event_recipient",
        ["hospital_id", "event_id"],
    )
    op.create_index("ix_notify_event_recipient_event", "notify_event_recipient", ["event_id"])


def downgrade() -> None:
    op.drop_table("notify_event_recipient")
    op.drop_table("notify_event")
