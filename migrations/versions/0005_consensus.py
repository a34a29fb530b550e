"""Consensus: project overlap / agreement threshold / review role, per-item consensus, triplet + snapshot member
agreement, route masks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("label_project") as b:
        b.add_column(sa.Column("overlap", sa.Integer(), server_default=sa.text("1"), nullable=False))
        b.add_column(sa.Column("min_agreement", sa.Float(), server_default=sa.text("0.5"), nullable=False))
        b.add_column(sa.Column("role", sa.String(length=16), server_default="label", nullable=False))
        b.add_column(sa.Column("review_of", sa.Integer(), nullable=True))
        b.create_foreign_key(
            op.f("fk_label_project_review_of_label_project"), "label_project", ["review_of"], ["id"],
            ondelete="SET NULL",
        )
    with op.batch_alter_table("annotation") as b:
        b.add_column(sa.Column("iou_vs_consensus", sa.Float(), nullable=True))
    with op.batch_alter_table("triplet") as b:
        b.add_column(sa.Column("agreement", sa.Float(), nullable=True))
        b.add_column(sa.Column("n_annotators", sa.Integer(), server_default=sa.text("1"), nullable=False))
        b.add_column(sa.Column("adjudicated", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("snapshot_member") as b:
        b.add_column(sa.Column("agreement", sa.Float(), nullable=True))
        b.add_column(sa.Column("n_annotators", sa.Integer(), server_default=sa.text("1"), nullable=False))
        b.add_column(sa.Column("adjudicated", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("prediction") as b:
        b.add_column(sa.Column("point_mask_sha256", sa.String(length=64), nullable=True))
        b.add_column(sa.Column("text_mask_sha256", sa.String(length=64), nullable=True))
    op.create_table(
        "item_consensus",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("n_annotators", sa.Integer(), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("annotation_id", sa.Integer(), nullable=True),
        sa.Column("verdict_agreement", sa.Float(), nullable=True),
        sa.Column("mask_iou", sa.Float(), nullable=True),
        sa.Column("boundary_f", sa.Float(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("support", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotation_id"], ["annotation.id"], name=op.f("fk_item_consensus_annotation_id_annotation"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["item.id"], name=op.f("fk_item_consensus_item_id_item"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item_consensus")),
        sa.UniqueConstraint("item_id", name=op.f("uq_item_consensus_item_id")),
    )
    op.create_index(op.f("ix_item_consensus_state"), "item_consensus", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_item_consensus_state"), table_name="item_consensus")
    op.drop_table("item_consensus")
    with op.batch_alter_table("prediction") as b:
        b.drop_column("text_mask_sha256")
        b.drop_column("point_mask_sha256")
    with op.batch_alter_table("snapshot_member") as b:
        b.drop_column("adjudicated")
        b.drop_column("n_annotators")
        b.drop_column("agreement")
    with op.batch_alter_table("triplet") as b:
        b.drop_column("adjudicated")
        b.drop_column("n_annotators")
        b.drop_column("agreement")
    with op.batch_alter_table("annotation") as b:
        b.drop_column("iou_vs_consensus")
    with op.batch_alter_table("label_project") as b:
        b.drop_constraint(op.f("fk_label_project_review_of_label_project"), type_="foreignkey")
        b.drop_column("review_of")
        b.drop_column("role")
        b.drop_column("min_agreement")
        b.drop_column("overlap")
