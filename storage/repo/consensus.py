"""Consensus settings of label projects, per-item consensus rows and the adjudication queue (storage.consensus)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.consensus import State
from storage.models import Annotation, Image, Item, ItemConsensus, LabelProject, LabelTask, Verdict, utcnow
from storage.repo.base import chunked, dialect_insert

ROLES = ("label", "review")


def project_consensus(session: Session, label_project_id: int) -> tuple[int, float]:
    """A project's (overlap, min_agreement): annotators per task and the agreement below which items are adjudicated."""
    project = session.get(LabelProject, label_project_id)
    if project is None:
        raise LookupError(f"no label project {label_project_id}")
    return int(project.overlap), float(project.min_agreement)


def set_project_consensus(
    session: Session,
    label_project_id: int,
    *,
    overlap: int | None = None,
    min_agreement: float | None = None,
    role: str | None = None,
    review_of: int | None = None,
) -> LabelProject:
    """Record a project's consensus settings (only the given ones change); returns the row. Commit is the caller's."""
    project = session.get(LabelProject, label_project_id)
    if project is None:
        raise LookupError(f"no label project {label_project_id}")
    if overlap is not None:
        if int(overlap) < 1:
            raise ValueError(f"overlap must be >= 1 annotator per task, got {overlap}")
        project.overlap = int(overlap)
    if min_agreement is not None:
        if not 0.0 <= float(min_agreement) <= 1.0:
            raise ValueError(f"min_agreement must lie in [0, 1], got {min_agreement}")
        project.min_agreement = float(min_agreement)
    if role is not None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        project.role = role
    if review_of is not None:
        if session.get(LabelProject, review_of) is None:
            raise LookupError(f"no label project {review_of} to review")
        project.review_of = int(review_of)
    session.flush()
    return project


def review_project_of(session: Session, label_project_id: int) -> LabelProject | None:
    """The adjudication (review) project recorded for a labeling project, or None."""
    return session.scalars(
        sa.select(LabelProject)
        .where(LabelProject.review_of == label_project_id, LabelProject.role == "review")
        .order_by(LabelProject.id)
        .limit(1)
    ).one_or_none()


def item_consensus(session: Session, item_id: int) -> ItemConsensus | None:
    return session.scalars(sa.select(ItemConsensus).where(ItemConsensus.item_id == item_id)).one_or_none()


def adjudication_queue(session: Session, label_project_id: int | None = None) -> list[ItemConsensus]:
    """Items waiting for a reviewer (state ``adjudication``), oldest first; ``label_project_id`` restricts to the
    items with a task in that (labeling) project."""
    q = sa.select(ItemConsensus).where(ItemConsensus.state == State.ADJUDICATION.value)
    if label_project_id is not None:
        q = q.where(
            ItemConsensus.item_id.in_(
                sa.select(LabelTask.item_id).where(LabelTask.label_project_id == label_project_id)
            )
        )
    return list(session.scalars(q.order_by(ItemConsensus.updated_at, ItemConsensus.item_id)))


def upsert_item_consensus(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write consensus rows (keyed by item_id), replacing what was stored."""
    if not rows:
        return
    ins = dialect_insert(session, ItemConsensus)
    cols = [
        "state", "n_annotators", "required", "verdict", "annotation_id", "verdict_agreement", "mask_iou",
        "boundary_f", "agreement", "support", "reason", "updated_at",
    ]  # fmt: skip
    stmt = ins.on_conflict_do_update(index_elements=["item_id"], set_={c: ins.excluded[c] for c in cols})
    now = utcnow()
    for chunk in chunked(list(rows)):
        session.execute(stmt, [{**r, "updated_at": now} for r in chunk])


@dataclass(frozen=True)
class AdjudicationCase:
    """An item in the adjudication queue not yet sent to the review project, with what the reviewer needs."""

    item_id: int
    query: str
    ls_task_id: int  # its task in the labeling project
    height: int
    width: int
    consensus: dict[str, Any]
    votes: list[dict[str, Any]]  # annotation_id, annotator, verdict, mask_sha256, iou_vs_consensus


def adjudication_cases(session: Session, label_project_id: int, review_project_id: int) -> list[AdjudicationCase]:
    """Queue items of a labeling project that have no task in its review project yet, by item id."""
    reviewed = sa.select(LabelTask.item_id).where(LabelTask.label_project_id == review_project_id)
    rows = session.execute(
        sa.select(ItemConsensus, LabelTask.ls_task_id, Item.query, Image.height, Image.width)
        .join(LabelTask, LabelTask.item_id == ItemConsensus.item_id)
        .join(Item, Item.id == ItemConsensus.item_id)
        .join(Image, Image.id == Item.image_id)
        .where(
            ItemConsensus.state == State.ADJUDICATION.value,
            LabelTask.label_project_id == label_project_id,
            ItemConsensus.item_id.not_in(reviewed),
        )
        .order_by(ItemConsensus.item_id)
    ).all()
    out: list[AdjudicationCase] = []
    for chunk in chunked(rows):
        ids = [r[0].item_id for r in chunk]
        votes: dict[int, list[dict[str, Any]]] = {}
        for a in session.scalars(
            sa.select(Annotation)
            .where(Annotation.item_id.in_(ids), Annotation.retracted.is_(False))
            .order_by(Annotation.id)
        ):
            votes.setdefault(a.item_id, []).append({
                "annotation_id": a.id, "annotator": a.annotator, "verdict": str(Verdict(a.verdict).value),
                "mask_sha256": a.mask_sha256, "iou_vs_consensus": a.iou_vs_consensus,
            })  # fmt: skip
        for c, ls_task_id, query, h, w in chunk:
            summary = {k: getattr(c, k) for k in (
                "state", "n_annotators", "required", "verdict_agreement", "mask_iou", "boundary_f", "agreement",
                "support", "reason")}  # fmt: skip
            out.append(AdjudicationCase(c.item_id, query, int(ls_task_id), int(h), int(w), summary,
                                        votes.get(c.item_id, [])))  # fmt: skip
    return out
