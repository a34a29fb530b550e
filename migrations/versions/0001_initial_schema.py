"""Initial schema: image, item, prediction, label_project, label_task, annotation, triplet, snapshot, snapshot_member.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("bands", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("crs", sa.Text(), nullable=True),
        sa.Column("transform", sa.JSON(), nullable=True),
        sa.Column("format", sa.String(length=32), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("bands > 0", name=op.f("ck_image_positive_bands")),
        sa.CheckConstraint("width > 0 AND height > 0", name=op.f("ck_image_positive_size")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image")),
        sa.UniqueConstraint("sha256", name=op.f("uq_image_sha256")),
    )
    op.create_table(
        "label_project",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label_studio_url", sa.Text(), nullable=False),
        sa.Column("ls_project_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_project")),
        sa.UniqueConstraint(
            "label_studio_url", "ls_project_id", name=op.f("uq_label_project_label_studio_url_ls_project_id")
        ),
    )
    op.create_table(
        "snapshot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshot")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_snapshot_name_version")),
    )
    op.create_table(
        "item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("level", sa.String(length=2), nullable=True),
        sa.Column("domain", sa.String(length=64), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "new",
                "predicted",
                "in_review",
                "accepted",
                "rejected",
                "no_target",
                name="item_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("level IS NULL OR level IN ('L1', 'L2', 'L3')", name=op.f("ck_item_level")),
        sa.ForeignKeyConstraint(["image_id"], ["image.id"], name=op.f("fk_item_image_id_image"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item")),
        sa.UniqueConstraint("image_id", "query", name=op.f("uq_item_image_id_query")),
    )
    op.create_index(op.f("ix_item_status"), "item", ["status"], unique=False)

    op.create_table(
        "prediction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("boxes", sa.JSON(), nullable=True),
        sa.Column("box", sa.JSON(), nullable=True),
        sa.Column("refined_box", sa.JSON(), nullable=True),
        sa.Column("phrase", sa.Text(), nullable=True),
        sa.Column("keypoints", sa.JSON(), nullable=True),
        sa.Column("route", sa.String(length=16), nullable=True),
        sa.Column("valid_point", sa.Boolean(), nullable=True),
        sa.Column("valid_text", sa.Boolean(), nullable=True),
        sa.Column("mask_sha256", sa.String(length=64), nullable=True),
        sa.Column("mask_area", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("raw_text", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "route IS NULL OR route IN ('intersection', 'point', 'text', 'empty')", name=op.f("ck_prediction_route")
        ),
        sa.ForeignKeyConstraint(["item_id"], ["item.id"], name=op.f("fk_prediction_item_id_item"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction")),
        sa.UniqueConstraint("item_id", "model_version", name=op.f("uq_prediction_item_id_model_version")),
    )
    op.create_table(
        "label_task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label_project_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=True),
        sa.Column("ls_prediction_id", sa.Integer(), nullable=True),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["item.id"], name=op.f("fk_label_task_item_id_item"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["label_project_id"],
            ["label_project.id"],
            name=op.f("fk_label_task_label_project_id_label_project"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["prediction.id"],
            name=op.f("fk_label_task_prediction_id_prediction"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_task")),
        sa.UniqueConstraint("label_project_id", "item_id", name=op.f("uq_label_task_label_project_id_item_id")),
        sa.UniqueConstraint("label_project_id", "ls_task_id", name=op.f("uq_label_task_label_project_id_ls_task_id")),
    )
    op.create_index(op.f("ix_label_task_item_id"), "label_task", ["item_id"], unique=False)

    op.create_table(
        "annotation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ls_annotation_id", sa.Integer(), nullable=False),
        sa.Column("label_task_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column(
            "verdict",
            sa.Enum(
                "accept", "no_target", "reject", name="verdict", native_enum=False, create_constraint=True, length=16
            ),
            nullable=False,
        ),
        sa.Column("mask_sha256", sa.String(length=64), nullable=True),
        sa.Column("mask_area", sa.Integer(), nullable=True),
        sa.Column("annotator", sa.Text(), nullable=True),
        sa.Column("lead_time", sa.Float(), nullable=True),
        sa.Column("iou_vs_prelabel", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retracted", sa.Boolean(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["item.id"], name=op.f("fk_annotation_item_id_item"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["label_task_id"],
            ["label_task.id"],
            name=op.f("fk_annotation_label_task_id_label_task"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation")),
        sa.UniqueConstraint("ls_annotation_id", name=op.f("uq_annotation_ls_annotation_id")),
    )
    op.create_index(op.f("ix_annotation_item_id"), "annotation", ["item_id"], unique=False)
    op.create_index(op.f("ix_annotation_label_task_id"), "annotation", ["label_task_id"], unique=False)
    op.create_index(op.f("ix_annotation_updated_at"), "annotation", ["updated_at"], unique=False)

    op.create_table(
        "triplet",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("mask_sha256", sa.String(length=64), nullable=False),
        sa.Column("domain", sa.String(length=64), nullable=True),
        sa.Column("level", sa.String(length=2), nullable=True),
        sa.Column("withdrawn", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotation_id"], ["annotation.id"], name=op.f("fk_triplet_annotation_id_annotation"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_triplet_image_id_image"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(["item_id"], ["item.id"], name=op.f("fk_triplet_item_id_item"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triplet")),
        sa.UniqueConstraint("annotation_id", name=op.f("uq_triplet_annotation_id")),
    )
    op.create_index(op.f("ix_triplet_item_id"), "triplet", ["item_id"], unique=False)

    op.create_table(
        "snapshot_member",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("triplet_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=32), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("mask_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["snapshot_id"], ["snapshot.id"], name=op.f("fk_snapshot_member_snapshot_id_snapshot"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["triplet_id"], ["triplet.id"], name=op.f("fk_snapshot_member_triplet_id_triplet"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshot_member")),
        sa.UniqueConstraint("snapshot_id", "triplet_id", name=op.f("uq_snapshot_member_snapshot_id_triplet_id")),
    )
    op.create_index(op.f("ix_snapshot_member_triplet_id"), "snapshot_member", ["triplet_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_snapshot_member_triplet_id"), table_name="snapshot_member")

    op.drop_table("snapshot_member")
    op.drop_index(op.f("ix_triplet_item_id"), table_name="triplet")

    op.drop_table("triplet")
    op.drop_index(op.f("ix_annotation_updated_at"), table_name="annotation")
    op.drop_index(op.f("ix_annotation_label_task_id"), table_name="annotation")
    op.drop_index(op.f("ix_annotation_item_id"), table_name="annotation")

    op.drop_table("annotation")
    op.drop_index(op.f("ix_label_task_item_id"), table_name="label_task")

    op.drop_table("label_task")
    op.drop_table("prediction")
    op.drop_index(op.f("ix_item_status"), table_name="item")

    op.drop_table("item")
    op.drop_table("snapshot")
    op.drop_table("label_project")
    op.drop_table("image")
