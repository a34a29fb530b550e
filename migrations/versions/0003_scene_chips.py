"""Scene chips (issue 16): an image row may be a chip of a scene -- its scene URI, scene size and pixel window.

The chip's own geotransform and the scene's CRS (WKT as read) live in the existing ``transform`` / ``crs`` columns;
the window's size is the image's ``width`` x ``height``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.add_column(sa.Column("scene_uri", sa.Text(), nullable=True))
        batch.add_column(sa.Column("scene_width", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("scene_height", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("window_col", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("window_row", sa.Integer(), nullable=True))
        batch.create_index(batch.f("ix_image_scene_uri"), ["scene_uri"])


def downgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.drop_index(batch.f("ix_image_scene_uri"))
        for col in ("window_row", "window_col", "scene_height", "scene_width", "scene_uri"):
            batch.drop_column(col)
