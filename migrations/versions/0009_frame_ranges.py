"""imaging: where each frame's bytes are in the stored file, recorded at ingest, so WADO-RS
reads one frame with a file seek or an S3 ranged GET instead of copying the whole instance

Instances indexed before this revision keep NULL and are served from the whole file, as before
(imaging.wado.frames falls back); nothing needs to be backfilled.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
#: The imaging tables come from 0003, a branch of its own.
depends_on = "0003"


def upgrade() -> None:
    with op.batch_alter_table("imaging_instance") as batch:
        batch.add_column(sa.Column("frame_ranges", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("imaging_instance") as batch:
        batch.drop_column("frame_ranges")
