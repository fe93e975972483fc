"""security and audit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 16:28:26.187824
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import alliance.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "audit_event",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("recorded", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("subtype", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=1), nullable=False),
        sa.Column("outcome", sa.String(length=2), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("hospital_id", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=64), nullable=True),
        sa.Column("practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.Column("entity", sa.String(length=160), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_event")),
        sa.UniqueConstraint("id", name=op.f("uq_audit_event_id")),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.create_index("ix_audit_event_entity", ["entity"], unique=False)
        batch_op.create_index("ix_audit_event_patient", ["patient_id", "recorded"], unique=False)
        batch_op.create_index("ix_audit_event_recorded", ["recorded"], unique=False)
        batch_op.create_index("ix_audit_event_username", ["username", "recorded"], unique=False)

    op.create_table(
        "security_access_grant",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=160), nullable=False),
        sa.Column("valid_from", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("valid_until", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("closed_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("closed_reason", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_access_grant")),
    )
    with op.batch_alter_table("security_access_grant", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_security_access_grant_hospital_id"), ["hospital_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_security_access_grant_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_security_access_grant_reason"), ["reason"], unique=False
        )

    op.create_table(
        "security_role",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("capabilities", sa.String(length=255), nullable=False),
        sa.Column("scope_ceiling", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_security_role")),
    )
    op.create_table(
        "security_access_grant_resource",
        sa.Column("grant_id", sa.String(length=36), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["security_access_grant.id"],
            name=op.f("fk_security_access_grant_resource_grant_id_security_access_grant"),
        ),
        sa.PrimaryKeyConstraint(
            "grant_id",
            "resource_type",
            "resource_id",
            name=op.f("pk_security_access_grant_resource"),
        ),
    )
    with op.batch_alter_table("security_access_grant_resource", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_security_access_grant_resource_resource_id"),
            ["resource_id"],
            unique=False,
        )

    op.create_table(
        "security_client",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("role_name", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_name"],
            ["security_role.name"],
            name=op.f("fk_security_client_role_name_security_role"),
        ),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_security_client")),
    )
    op.create_table(
        "security_user",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("role_name", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("created", alliance.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_name"],
            ["security_role.name"],
            name=op.f("fk_security_user_role_name_security_role"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_user")),
        sa.UniqueConstraint("username", name=op.f("uq_security_user_username")),
    )

    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_event_no_{action.lower()} BEFORE {action} ON audit_event "
                f"BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: {action} refused'); END"
            )
    if op.get_bind().dialect.name == "postgresql":
        # The audit trail is append-only (GB/T 22239-2019): the database itself refuses to
        # change, delete or truncate its rows, whoever asks.
        op.execute(
            """
            CREATE FUNCTION audit_event_append_only() RETURNS trigger AS $$
            BEGIN
              RAISE EXCEPTION 'audit_event is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER audit_event_no_update_delete BEFORE UPDATE OR DELETE ON audit_event "
            "FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_event")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update_delete ON audit_event")
        op.execute("DROP FUNCTION IF EXISTS audit_event_append_only()")

    op.drop_table("security_user")
    op.drop_table("security_client")
    with op.batch_alter_table("security_access_grant_resource", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_access_grant_resource_resource_id"))

    op.drop_table("security_access_grant_resource")
    op.drop_table("security_role")
    with op.batch_alter_table("security_access_grant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_access_grant_reason"))
        batch_op.drop_index(batch_op.f("ix_security_access_grant_patient_id"))
        batch_op.drop_index(batch_op.f("ix_security_access_grant_hospital_id"))

    op.drop_table("security_access_grant")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_event_username")
        batch_op.drop_index("ix_audit_event_recorded")
        batch_op.drop_index("ix_audit_event_patient")
        batch_op.drop_index("ix_audit_event_entity")

    op.drop_table("audit_event")
