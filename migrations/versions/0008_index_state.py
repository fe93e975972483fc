"""search index: which version of the indexing rules built it (alliance.fhir.reindex), so a
change to them rebuilds the index once on upgrade

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 15:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_index_state",
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("fhir_index_state")
