"""Label Studio projects and the tasks pushed to them (one per project and item)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from storage.models import DECIDED, Item, ItemStatus, LabelProject, LabelTask, Prediction, utcnow
from storage.records import LabelTaskRecord
from storage.repo.base import check_records, chunked, dialect_insert


def upsert_label_project(session: Session, label_studio_url: str, ls_project_id: int, title: str | None = None) -> int:
    """Register a Label Studio project; returns its row id (stable across runs)."""
    if not isinstance(ls_project_id, int) or ls_project_id < 1:
        raise ValueError(f"ls_project_id must be a positive integer, got {ls_project_id!r}")
    url = label_studio_url.rstrip("/")
    stmt = dialect_insert(session, LabelProject).on_conflict_do_nothing(
        index_elements=["label_studio_url", "ls_project_id"]
    )
    session.execute(
        stmt, {"label_studio_url": url, "ls_project_id": ls_project_id, "title": title, "created_at": utcnow()}
    )
    return session.execute(
        sa.select(LabelProject.id).where(
            LabelProject.label_studio_url == url, LabelProject.ls_project_id == ls_project_id
        )
    ).scalar_one()


def predictions_awaiting_push(
    session: Session, label_project_id: int, model_version: str, *, limit: int | None = None
) -> list[tuple[Item, Prediction]]:
    """Successful predictions of ``model_version`` not yet pushed to the project as pre-labels, oldest item first.

    An item with a task whose pushed prediction is a different one (an older model version) is returned again so
    that the new pre-label can be added. Items already decided (accepted/rejected/no target) are left alone.
    """
    pushed = sa.select(LabelTask.id).where(
        LabelTask.label_project_id == label_project_id,
        LabelTask.item_id == Prediction.item_id,
        LabelTask.prediction_id == Prediction.id,
    )
    q = (
        sa.select(Item, Prediction)
        .join(Prediction, Prediction.item_id == Item.id)
        .options(joinedload(Item.image))
        .where(
            Prediction.model_version == model_version,
            Prediction.error.is_(None),
            ~pushed.exists(),
            Item.status.not_in(list(DECIDED)),
        )
        .order_by(Item.id)
    )
    if limit is not None:
        q = q.limit(int(limit))
    return [(i, p) for i, p in session.execute(q).tuples()]


def record_label_tasks(session: Session, records: Sequence[LabelTaskRecord]) -> dict[int, int]:
    """Record pushed tasks (newest push wins); items move to in_review. Returns ``{item_id: label task id}``."""
    records = check_records(records, LabelTaskRecord)
    if not records:
        return {}
    uniq = list({(r.label_project_id, r.item_id): r for r in records}.values())
    ins = dialect_insert(session, LabelTask)
    stmt = ins.on_conflict_do_update(
        index_elements=["label_project_id", "item_id"],
        set_={
            "ls_task_id": ins.excluded.ls_task_id,
            "prediction_id": sa.func.coalesce(ins.excluded.prediction_id, LabelTask.__table__.c.prediction_id),
            "ls_prediction_id": sa.func.coalesce(ins.excluded.ls_prediction_id, LabelTask.__table__.c.ls_prediction_id),
            "pushed_at": ins.excluded.pushed_at,
        },
    )
    now = utcnow()
    for chunk in chunked(uniq):
        session.execute(stmt, [{**r.row(), "pushed_at": now} for r in chunk])
    item_ids = sorted({r.item_id for r in uniq})
    for chunk in chunked(item_ids):
        session.execute(
            sa.update(Item)
            .where(Item.id.in_(chunk), Item.status.in_([ItemStatus.NEW, ItemStatus.PREDICTED]))
            .values(status=ItemStatus.IN_REVIEW, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    out: dict[int, int] = {}
    projects = sorted({r.label_project_id for r in uniq})
    for chunk in chunked(item_ids):
        q = sa.select(LabelTask.item_id, LabelTask.id).where(
            LabelTask.item_id.in_(chunk), LabelTask.label_project_id.in_(projects)
        )
        out.update(session.execute(q).tuples().all())
    return out


def label_task_by_ls_id(session: Session, label_project_id: int, ls_task_id: int) -> LabelTask | None:
    return session.scalars(
        sa.select(LabelTask)
        .options(joinedload(LabelTask.item), joinedload(LabelTask.prediction))
        .where(LabelTask.label_project_id == label_project_id, LabelTask.ls_task_id == ls_task_id)
    ).one_or_none()


def label_tasks(session: Session, label_project_id: int) -> list[LabelTask]:
    return list(
        session.scalars(
            sa.select(LabelTask).where(LabelTask.label_project_id == label_project_id).order_by(LabelTask.id)
        )
    )


def projects_with_tasks(session: Session, label_studio_url: str) -> list[str]:
    """Titles of this Label Studio's projects that hold pushed tasks, most recently pushed first."""
    q = (
        sa.select(LabelProject.title, sa.func.max(LabelTask.pushed_at).label("last"))
        .join(LabelTask, LabelTask.label_project_id == LabelProject.id)
        .where(LabelProject.label_studio_url == label_studio_url.rstrip("/"), LabelProject.title.is_not(None))
        .group_by(LabelProject.id, LabelProject.title)
        .order_by(sa.desc("last"))
    )
    return [str(t) for t, _ in session.execute(q)]


def task_image_sizes(session: Session, ls_project_id: int) -> dict[int, tuple[int, int, int]]:
    """Label Studio task id -> (image height, image width, item id) for one project's recorded tasks."""
    from storage.models import Image

    q = (
        sa.select(LabelTask.ls_task_id, Image.height, Image.width, LabelTask.item_id)
        .join(Item, LabelTask.item_id == Item.id)
        .join(Image, Item.image_id == Image.id)
        .join(LabelProject, LabelTask.label_project_id == LabelProject.id)
        .where(LabelProject.ls_project_id == ls_project_id)
    )
    return {int(t): (int(h), int(w), int(i)) for t, h, w, i in session.execute(q)}


def label_projects(session: Session) -> list[tuple[str, int, str | None, int]]:
    """(Label Studio URL, project id, title, tasks recorded) of every known project, oldest first."""
    q = (
        sa.select(LabelProject.label_studio_url, LabelProject.ls_project_id, LabelProject.title,
                  sa.func.count(LabelTask.id))
        .outerjoin(LabelTask, LabelTask.label_project_id == LabelProject.id)
        .group_by(LabelProject.id)
        .order_by(LabelProject.id)
    )
    return [(str(u), int(p), t, int(n)) for u, p, t, n in session.execute(q)]
