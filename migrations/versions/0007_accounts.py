"""accounts: the public signature keys (kept for good, so old signatures stay verifiable), the
token epoch that revokes an account's tokens and sessions, failed logins throttled in the
database instead of locking accounts, and the roles each role manages

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import alliance.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: What the built-in roles manage (alliance.security.service.BUILTIN_ROLES).
MANAGES = {"hospital-admin": "county-doctor specialist"}


def upgrade() -> None:
    op.create_table(
        "security_signing_key",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("first_used", alliance.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_security_signing_key")),
    )
    op.create_table(
        "security_login_throttle",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("blocked_until", alliance.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_security_login_throttle")),
    )
    with op.batch_alter_table("security_login_throttle", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_security_login_throttle_last_failure"), ["last_failure"], unique=False
        )
    with op.batch_alter_table("security_user", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_epoch", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.drop_column("failed_logins")
        batch_op.drop_column("locked_until")
    with op.batch_alter_table("security_client", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_epoch", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("security_role", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("manages", sa.String(length=255), nullable=False, server_default="")
        )
    role = sa.table("security_role", sa.column("name", sa.String), sa.column("manages", sa.String))
    for name, manages in MANAGES.items():
        op.execute(role.update().where(role.c.name == name).values(manages=manages))


def downgrade() -> None:
    with op.batch_alter_table("security_role", schema=None) as batch_op:
        batch_op.drop_column("manages")
    with op.batch_alter_table("security_client", schema=None) as batch_op:
        batch_op.drop_column("token_epoch")
    with op.batch_alter_table("security_user", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("locked_until", alliance.db.UTCDateTime(), nullable=True),
        )
        batch_op.add_column(
            sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.drop_column("token_epoch")
    with op.batch_alter_table("security_login_throttle", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_login_throttle_last_failure"))
    op.drop_table("security_login_throttle")
    op.drop_table("security_signing_key")
