"""Item identity by query key: ``item.query_key`` + unique (image_id, query_key); merges items the new rule joins.

The key is ``geoseg.vocabulary.query_key(query)`` (NFKC, whitespace collapsed, case-folded). Before this revision the
unique key was (image_id, query) with only ``strip`` applied by storage, so "Red roof" and "red  roof" on one image
could be two items. Upgrading:

1. adds ``item.query_key`` and fills it for every row;
2. merges each group of items on one image with the same key into the oldest one (created_at, then id), keeping
   everything done on the others:

   * predictions move to the survivor; where the survivor already has one for that model version, the survivor's
     is kept (unless it failed and the other did not), the other is deleted, and label tasks that pushed the
     deleted one point at the kept one;
   * label tasks move to the survivor; where the survivor already has a task in that Label Studio project, the
     other task's annotations move to the survivor's task and the other task row is retired (deleted; its Label
     Studio task is left as it is and named in the log);
   * annotations and triplets move to the survivor (they have no per-item unique key);
   * the survivor takes the most advanced status of the group (decided > in review > predicted > new; among
     decided ones the most recently updated), and a level/domain it lacks from the others;

   every merge is logged (logger ``geolabel.migrations``, level WARNING): survivor, merged ids and what moved;
3. replaces the unique constraint (image_id, query) by (image_id, query_key) and makes the column NOT NULL.

Works on SQLite (batch mode: the table is rebuilt) and PostgreSQL. Downgrade restores (image_id, query) and drops
the column; merged items are not split again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

from geoseg.vocabulary import query_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("geolabel.migrations")

_RANK = {"new": 0, "predicted": 1, "in_review": 2, "accepted": 3, "rejected": 3, "no_target": 3}

meta = sa.MetaData()
item = sa.Table(
    "item", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("image_id", sa.Integer),
    sa.Column("query", sa.Text), sa.Column("query_key", sa.Text), sa.Column("level", sa.String(2)),
    sa.Column("domain", sa.String(64)), sa.Column("status", sa.String(16)), sa.Column("created_at", sa.DateTime),
    sa.Column("updated_at", sa.DateTime),
)
prediction = sa.Table(
    "prediction", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("item_id", sa.Integer),
    sa.Column("model_version", sa.String(128)), sa.Column("error", sa.Text),
)
label_task = sa.Table(
    "label_task", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("label_project_id", sa.Integer),
    sa.Column("item_id", sa.Integer), sa.Column("ls_task_id", sa.Integer), sa.Column("prediction_id", sa.Integer),
)
annotation = sa.Table(
    "annotation", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("item_id", sa.Integer),
    sa.Column("label_task_id", sa.Integer),
)
triplet = sa.Table("triplet", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("item_id", sa.Integer))


def _backfill(conn: sa.Connection) -> dict[tuple[int, str], list[Any]]:
    """Fill ``query_key``; returns the groups of more than one item by (image_id, key), oldest first."""
    rows = conn.execute(sa.select(item).order_by(item.c.id)).all()
    groups: dict[tuple[int, str], list[Any]] = defaultdict(list)
    keys = []
    for r in rows:
        k = query_key(r.query)
        keys.append({"b_id": r.id, "b_key": k})
        groups[(r.image_id, k)].append(r)
    stmt = item.update().where(item.c.id == sa.bindparam("b_id")).values(query_key=sa.bindparam("b_key"))
    for start in range(0, len(keys), 1000):  # executemany in slices (no app helpers in a migration: frozen code)
        conn.execute(stmt, keys[start : start + 1000])
    return {k: sorted(v, key=lambda r: (r.created_at, r.id)) for k, v in groups.items() if len(v) > 1}


def _merge_predictions(conn: sa.Connection, keep: int, other: int) -> list[str]:
    notes: list[str] = []
    mine = {r.model_version: r for r in conn.execute(sa.select(prediction).where(prediction.c.item_id == keep))}
    for p in conn.execute(sa.select(prediction).where(prediction.c.item_id == other)).all():
        s = mine.get(p.model_version)
        if s is None:
            conn.execute(prediction.update().where(prediction.c.id == p.id).values(item_id=keep))
            mine[p.model_version] = p
            notes.append(f"prediction {p.id} moved")
            continue
        winner, loser = (p, s) if s.error is not None and p.error is None else (s, p)
        conn.execute(label_task.update().where(label_task.c.prediction_id == loser.id).values(prediction_id=winner.id))
        conn.execute(prediction.delete().where(prediction.c.id == loser.id))
        if winner is p:
            conn.execute(prediction.update().where(prediction.c.id == p.id).values(item_id=keep))
            mine[p.model_version] = p
        notes.append(f"prediction {loser.id} ({p.model_version}) dropped for {winner.id}")
    return notes


def _merge_tasks(conn: sa.Connection, keep: int, other: int) -> list[str]:
    notes: list[str] = []
    mine = {r.label_project_id: r for r in conn.execute(sa.select(label_task).where(label_task.c.item_id == keep))}
    for t in conn.execute(sa.select(label_task).where(label_task.c.item_id == other)).all():
        s = mine.get(t.label_project_id)
        if s is None:
            conn.execute(label_task.update().where(label_task.c.id == t.id).values(item_id=keep))
            mine[t.label_project_id] = t
            notes.append(f"label task {t.id} moved")
            continue
        conn.execute(annotation.update().where(annotation.c.label_task_id == t.id).values(label_task_id=s.id))
        conn.execute(label_task.delete().where(label_task.c.id == t.id))
        notes.append(f"label task {t.id} (Label Studio task {t.ls_task_id}) retired: annotations now on task {s.id}")
    return notes


def _merge_group(conn: sa.Connection, group: list[Any]) -> str:
    keep, others = group[0], group[1:]
    notes: list[str] = []
    for o in others:
        notes += _merge_predictions(conn, keep.id, o.id)
        notes += _merge_tasks(conn, keep.id, o.id)
        n_ann = conn.execute(annotation.update().where(annotation.c.item_id == o.id).values(item_id=keep.id)).rowcount
        n_tri = conn.execute(triplet.update().where(triplet.c.item_id == o.id).values(item_id=keep.id)).rowcount
        if n_ann or n_tri:
            notes.append(f"{n_ann} annotation(s), {n_tri} triplet(s) of item {o.id} moved")
        conn.execute(item.delete().where(item.c.id == o.id))
    lead = max(group, key=lambda r: (_RANK.get(str(r.status), 0), r.updated_at, r.id))
    values = {
        "status": lead.status,
        "level": keep.level or next((r.level for r in others if r.level), None),
        "domain": keep.domain or next((r.domain for r in others if r.domain), None),
    }
    conn.execute(item.update().where(item.c.id == keep.id).values(**values))
    merged = ", ".join(f"{r.id} {r.query!r}" for r in others)
    detail = "; ".join(notes) or "nothing done on them yet"
    return f"item {keep.id} {keep.query!r} (image {keep.image_id}) absorbed item(s) {merged}: {detail}"


def upgrade() -> None:
    with op.batch_alter_table("item") as batch:
        batch.add_column(sa.Column("query_key", sa.Text(), nullable=True))
    conn = op.get_bind()
    groups = _backfill(conn)
    for group in groups.values():
        log.warning("migration 0002: %s", _merge_group(conn, group))
    n = sum(len(g) - 1 for g in groups.values())
    log.warning("migration 0002: query keys set; %d duplicate item(s) merged into %d item(s)", n, len(groups))
    with op.batch_alter_table("item") as batch:
        batch.alter_column("query_key", existing_type=sa.Text(), nullable=False)
        batch.drop_constraint("uq_item_image_id_query", type_="unique")
        batch.create_unique_constraint("uq_item_image_id_query_key", ["image_id", "query_key"])


def downgrade() -> None:
    with op.batch_alter_table("item") as batch:
        batch.drop_constraint("uq_item_image_id_query_key", type_="unique")
        batch.create_unique_constraint("uq_item_image_id_query", ["image_id", "query"])
        batch.drop_column("query_key")
