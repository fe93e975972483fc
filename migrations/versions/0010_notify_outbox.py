"""notifications: the outbox of events and who each concerns, FHIR Subscriptions' delivery
state and delivery attempts (issue 14)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
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
    op.create_table(
        "notify_subscription",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("reader_kind", sa.String(length=16), nullable=False),
        sa.Column("reader_name", sa.String(length=64), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("capabilities", sa.String(length=255), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("topic", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=1000), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("content", sa.String(length=16), nullable=False),
        sa.Column("heartbeat_seconds", sa.Integer(), nullable=True),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("max_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("matched_through", EVENT_NUMBER, nullable=False),
        sa.Column("events_since_start", EVENT_NUMBER, nullable=False),
        sa.Column("started_after", EVENT_NUMBER, nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sent", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_subscription")),
    )
    op.create_index(
        op.f("ix_notify_subscription_hospital_id"), "notify_subscription", ["hospital_id"]
    )
    op.create_index(
        op.f("ix_notify_subscription_next_attempt"), "notify_subscription", ["next_attempt"]
    )
    op.create_table(
        "notify_attempt",
        sa.Column("id", EVENT_NUMBER, autoincrement=True, nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=24), nullable=False),
        sa.Column("first_number", EVENT_NUMBER, nullable=True),
        sa.Column("last_number", EVENT_NUMBER, nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("milliseconds", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_attempt")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_notify_attempt_hospital", "notify_attempt", ["hospital_id", "id"])
    op.create_index("ix_notify_attempt_subscription", "notify_attempt", ["subscription_id", "id"])


def downgrade() -> None:
    op.drop_table("notify_attempt")
    op.drop_table("notify_subscription")
    op.drop_table("notify_event_recipient")
    op.drop_table("notify_event")
