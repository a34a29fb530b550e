"""Work claims: leases (owner, expiry) on pieces of work, so that overlapping runs and workers do each thing once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work_claim",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("previous_owner", sa.String(length=200), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", name=op.f("pk_work_claim")),
    )
    op.create_index(op.f("ix_work_claim_expires_at"), "work_claim", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_work_claim_expires_at"), table_name="work_claim")
    op.drop_table("work_claim")
