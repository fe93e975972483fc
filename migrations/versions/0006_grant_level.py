"""sharing: an access grant opens its records either for triage (what a receiving specialist
needs to decide: a subset of each record) or in full (after acceptance)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("security_access_grant", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("level", sa.String(length=16), nullable=False, server_default="full")
        )


def downgrade() -> None:
    with op.batch_alter_table("security_access_grant", schema=None) as batch_op:
        batch_op.drop_column("level")
