"""Annotations synced from Label Studio, the item decision they imply, triplets and sync watermarks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from storage.blobs import BlobStore
from storage.consensus import DEFAULT_INLIER_IOU, DEFAULT_MIN_AGREEMENT, Vote, decide
from storage.maskcodec import decode_mask
from storage.models import (
    VERDICT_STATUS,
    Annotation,
    Image,
    Item,
    ItemStatus,
    LabelProject,
    LabelTask,
    SnapshotMember,
    Triplet,
    Verdict,
    transition,
    utcnow,
)
from storage.records import AnnotationRecord, TripletRecord
from storage.repo.base import check_records, chunked, dialect_insert, row_locks
from storage.repo.consensus import upsert_item_consensus
from storage.repo.snapshots import get_snapshot


def upsert_annotations(
    session: Session, records: Sequence[AnnotationRecord], blobs: BlobStore | None = None
) -> dict[int, int]:
    """Store annotations (a newer ``updated_at`` replaces the stored one) and re-decide the items they touch.

    Returns ``{ls_annotation_id: annotation id}``. Each touched item's status follows its deciding annotation and
    its accepted triplet is created, updated or withdrawn to match.
    """
    records = check_records(records, AnnotationRecord)
    if not records:
        return {}
    uniq: dict[int, AnnotationRecord] = {}
    for r in records:  # the same annotation twice in one batch: keep the newest
        if r.ls_annotation_id not in uniq or r.updated_at >= uniq[r.ls_annotation_id].updated_at:
            uniq[r.ls_annotation_id] = r
    task_ids = sorted({r.label_task_id for r in uniq.values()})
    task_item: dict[int, int] = {}
    for chunk in chunked(task_ids):
        task_item.update(
            session.execute(sa.select(LabelTask.id, LabelTask.item_id).where(LabelTask.id.in_(chunk))).tuples().all()
        )
    missing = sorted(set(task_ids) - set(task_item))
    if missing:
        raise LookupError(f"annotations refer to unknown label tasks {missing[:10]}: record the tasks first")
    ins = dialect_insert(session, Annotation)
    tbl = Annotation.__table__
    updatable = [
        "label_task_id", "item_id", "verdict", "mask_sha256", "mask_area", "annotator",
        "lead_time", "iou_vs_prelabel", "created_at", "updated_at", "synced_at",
    ]  # fmt: skip
    stmt = ins.on_conflict_do_update(
        index_elements=["ls_annotation_id"],
        set_={c: ins.excluded[c] for c in updatable} | {"retracted": sa.false()},
        where=tbl.c.updated_at < ins.excluded.updated_at,
    )
    now = utcnow()
    rows = [
        {**r.row(), "item_id": task_item[r.label_task_id], "retracted": False, "synced_at": now} for r in uniq.values()
    ]
    for chunk in chunked(rows):
        session.execute(stmt, chunk)
    session.expire_all()
    redecide_items(session, sorted({row["item_id"] for row in rows}), blobs)
    out: dict[int, int] = {}
    ids = sorted(uniq)
    for chunk in chunked(ids):
        q = sa.select(Annotation.ls_annotation_id, Annotation.id).where(Annotation.ls_annotation_id.in_(chunk))
        out.update(session.execute(q).tuples().all())
    return out


def stored_annotation_versions(session: Session, ls_annotation_ids: Iterable[int]) -> dict[int, datetime]:
    """``{ls_annotation_id: updated_at}`` of the stored, not retracted annotations among ``ls_annotation_ids``: what a
    sync need not read again (Label Studio's ``updated_at`` is no newer)."""
    ids = sorted({int(i) for i in ls_annotation_ids})
    out: dict[int, datetime] = {}
    for chunk in chunked(ids):
        out.update(session.execute(
            sa.select(Annotation.ls_annotation_id, Annotation.updated_at).where(
                Annotation.ls_annotation_id.in_(chunk), Annotation.retracted.is_(False))
        ).tuples().all())
    return out


def retract_annotations(
    session: Session, ls_annotation_ids: Iterable[int], blobs: BlobStore | None = None
) -> int:
    """Mark annotations deleted in Label Studio as retracted and re-decide their items; returns how many changed."""
    ids = sorted({int(i) for i in ls_annotation_ids})
    if not ids:
        return 0
    changed = 0
    items: set[int] = set()
    for chunk in chunked(ids):
        rows = session.execute(
            sa.update(Annotation)
            .where(Annotation.ls_annotation_id.in_(chunk), Annotation.retracted.is_(False))
            .values(retracted=True, synced_at=utcnow())
            .returning(Annotation.item_id)
            .execution_options(synchronize_session=False)
        ).all()
        changed += len(rows)
        items.update(r[0] for r in rows)
    session.expire_all()
    redecide_items(session, sorted(items), blobs)
    return changed


def _item_settings(session: Session, chunk: Sequence[int]) -> dict[int, tuple[int, float]]:
    """(required overlap, min agreement) per item: of its labeling project with the highest overlap."""
    rows = session.execute(
        sa.select(LabelTask.item_id, LabelProject.overlap, LabelProject.min_agreement)
        .join(LabelProject, LabelTask.label_project_id == LabelProject.id)
        .where(LabelTask.item_id.in_(chunk), LabelProject.role != "review")
    ).all()
    out: dict[int, tuple[int, float]] = {}
    for r in rows:
        cur = out.get(r.item_id)
        if cur is None or int(r.overlap) > cur[0]:
            out[r.item_id] = (int(r.overlap), float(r.min_agreement))
    return out


def _votes(
    session: Session, chunk: Sequence[int], shapes: dict[int, tuple[int, int]], required: dict[int, int],
    blobs: BlobStore | None,
) -> tuple[dict[int, list[Vote]], dict[int, Any]]:
    """Live votes per item (masks decoded only where the consensus needs them) and the annotation rows by id."""
    live = session.execute(
        sa.select(
            Annotation.id, Annotation.item_id, Annotation.verdict, Annotation.mask_sha256, Annotation.updated_at,
            Annotation.annotator, Annotation.iou_vs_consensus, LabelProject.role,
        )
        .join(LabelTask, Annotation.label_task_id == LabelTask.id)
        .join(LabelProject, LabelTask.label_project_id == LabelProject.id)
        .where(Annotation.item_id.in_(chunk), Annotation.retracted.is_(False))
    ).all()
    per_item: dict[int, list[Any]] = {}
    for a in live:
        per_item.setdefault(a.item_id, []).append(a)
    votes: dict[int, list[Vote]] = {}
    for iid, anns in per_item.items():
        multi = len(anns) >= 2 or any(a.role == "review" for a in anns)
        need = multi and (required.get(iid, 1) >= 2 or any(a.role == "review" for a in anns))
        if need and blobs is None:
            raise ValueError(f"item {iid}: its consensus compares masks, pass the blob store (blobs=...)")
        out = []
        for a in anns:
            mask = None
            if multi and blobs is not None and a.mask_sha256:
                mask = decode_mask(blobs.get(a.mask_sha256), shape=shapes[iid])
            out.append(Vote(a.id, Verdict(a.verdict).value, a.updated_at, a.annotator, mask, a.role == "review"))
        votes[iid] = out
    return votes, {a.id: a for a in live}


def redecide_items(
    session: Session, item_ids: Sequence[int], blobs: BlobStore | None = None, *, inlier_iou: float = DEFAULT_INLIER_IOU
) -> None:
    """Bring each item's status, consensus row and triplet in line with the consensus of its live annotations.

    The rule is :func:`storage.consensus.decide`: in a project with overlap 1 the newest live annotation decides (as
    before consensus); with overlap N >= 2 the item stays ``in_review`` until N annotators voted, then the verdict
    majority and the medoid mask decide, or the item waits in the adjudication queue; a reviewer's annotation (in the
    project's review project) is final. ``blobs`` is needed where masks are compared (several live annotations).

    Set-based: one query for the items, one for their live annotations, then bulk updates -- so a sync of
    thousands of annotations costs a few statements per 500 items, not a few per item.
    """
    lock = row_locks(session)
    for chunk in chunked(sorted(set(item_ids))):
        q = sa.select(Item).where(Item.id.in_(chunk)).order_by(Item.id)
        items = list(session.scalars(q.with_for_update() if lock else q))
        settings = _item_settings(session, chunk)
        shapes = {
            r.id: (int(r.height), int(r.width))
            for r in session.execute(
                sa.select(Item.id, Image.height, Image.width).join(Image).where(Item.id.in_(chunk))
            )
        }
        votes, rows = _votes(session, chunk, shapes, {k: v[0] for k, v in settings.items()}, blobs)
        triplets: list[dict[str, Any]] = []
        cons_rows: list[dict[str, Any]] = []
        iou_updates: list[dict[str, Any]] = []
        for item in items:
            required, min_agreement = settings.get(item.id, (1, DEFAULT_MIN_AGREEMENT))
            c = decide(votes.get(item.id, []), required=required, min_agreement=min_agreement, inlier_iou=inlier_iou)
            target = VERDICT_STATUS[Verdict(c.verdict)] if c.decided else ItemStatus.IN_REVIEW
            if item.status != target:
                if item.status != ItemStatus.IN_REVIEW:
                    transition(item, ItemStatus.IN_REVIEW)
                transition(item, target)
            cons_rows.append({
                "item_id": item.id, "state": c.state.value, "n_annotators": c.n_annotators, "required": c.required,
                "verdict": c.verdict, "annotation_id": c.annotation_id, "verdict_agreement": c.verdict_agreement,
                "mask_iou": c.mask_iou, "boundary_f": c.boundary_f, "agreement": c.agreement, "support": c.support,
                "reason": c.reason,
            })  # fmt: skip
            for v in votes.get(item.id, []):
                value = c.iou_vs_consensus.get(v.annotation_id)
                if rows[v.annotation_id].iou_vs_consensus != value:
                    iou_updates.append({"id": v.annotation_id, "iou_vs_consensus": value})
            if c.decided and c.verdict == Verdict.ACCEPT:
                triplets.append(
                    {
                        "annotation_id": c.annotation_id,
                        "item_id": item.id,
                        "image_id": item.image_id,
                        "query": item.query,
                        "mask_sha256": rows[c.annotation_id].mask_sha256,
                        "domain": item.domain,
                        "level": item.level,
                        "agreement": c.agreement,
                        "n_annotators": c.n_annotators,
                        "adjudicated": c.adjudicated,
                    }
                )
        session.flush()
        if iou_updates:
            session.execute(sa.update(Annotation), iou_updates)
        upsert_item_consensus(session, cons_rows)
        keep = [t["annotation_id"] for t in triplets] or [-1]
        session.execute(
            sa.update(Triplet)
            .where(Triplet.item_id.in_(chunk), Triplet.withdrawn.is_(False), Triplet.annotation_id.not_in(keep))
            .values(withdrawn=True)
            .execution_options(synchronize_session=False)
        )
        if triplets:
            _upsert_triplet_rows(session, triplets)
    session.flush()
    session.expire_all()


def _upsert_triplet_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    ins = dialect_insert(session, Triplet)
    stmt = ins.on_conflict_do_update(
        index_elements=["annotation_id"],
        set_={
            "mask_sha256": ins.excluded.mask_sha256,
            "query": ins.excluded.query,
            "domain": ins.excluded.domain,
            "level": ins.excluded.level,
            "agreement": ins.excluded.agreement,
            "n_annotators": ins.excluded.n_annotators,
            "adjudicated": ins.excluded.adjudicated,
            "withdrawn": sa.false(),
        },
    )
    now = utcnow()
    base = {"agreement": None, "n_annotators": 1, "adjudicated": False}
    for chunk in chunked(rows):
        session.execute(stmt, [{**base, **r, "withdrawn": False, "created_at": now} for r in chunk])


def upsert_triplets(session: Session, records: Sequence[TripletRecord]) -> dict[int, int]:
    """Bulk import of accepted triplets (keyed by annotation); returns ``{annotation_id: triplet id}``."""
    records = check_records(records, TripletRecord)
    if not records:
        return {}
    rows = list({r.annotation_id: r.row() for r in records}.values())
    _upsert_triplet_rows(session, rows)
    out: dict[int, int] = {}
    ids = sorted(r["annotation_id"] for r in rows)
    for chunk in chunked(ids):
        q = sa.select(Triplet.annotation_id, Triplet.id).where(Triplet.annotation_id.in_(chunk))
        out.update(session.execute(q).tuples().all())
    return out


def annotations_since(
    session: Session, label_project_id: int, watermark: datetime | None = None, *, limit: int | None = None
) -> list[Annotation]:
    """Annotations of the project updated after ``watermark`` (all when None), oldest update first."""
    q = (
        sa.select(Annotation)
        .join(LabelTask, LabelTask.id == Annotation.label_task_id)
        .where(LabelTask.label_project_id == label_project_id)
        .order_by(Annotation.updated_at, Annotation.id)
    )
    if watermark is not None:
        if watermark.tzinfo is None:
            raise ValueError("watermark must be timezone-aware (UTC)")
        q = q.where(Annotation.updated_at > watermark)
    if limit is not None:
        q = q.limit(int(limit))
    return list(session.scalars(q))


def get_watermark(session: Session, label_project_id: int) -> datetime | None:
    project = session.get(LabelProject, label_project_id)
    if project is None:
        raise LookupError(f"no label project {label_project_id}")
    return project.watermark


def advance_watermark(session: Session, label_project_id: int, watermark: datetime) -> datetime:
    """Move the project's sync watermark forward to ``watermark`` (never back); returns the stored value."""
    if watermark.tzinfo is None:
        raise ValueError("watermark must be timezone-aware (UTC)")
    project = session.get(LabelProject, label_project_id, with_for_update=row_locks(session))
    if project is None:
        raise LookupError(f"no label project {label_project_id}")
    if project.watermark is None or watermark > project.watermark:
        project.watermark = watermark
    project.last_synced_at = utcnow()
    session.flush()
    return project.watermark


def accepted_triplets(
    session: Session,
    *,
    domain: str | None = None,
    level: str | None = None,
    snapshot: tuple[str, str] | None = None,
    include_withdrawn: bool = False,
) -> list[Triplet]:
    """Accepted triplets (image loaded), filtered by domain / level; ``snapshot=(name, version)`` gives that
    snapshot's frozen members (withdrawn or not: a snapshot never changes)."""
    q = sa.select(Triplet).options(joinedload(Triplet.image)).order_by(Triplet.id)
    if snapshot is not None:
        snap = get_snapshot(session, *snapshot)
        if snap is None:
            raise LookupError(f"no snapshot {snapshot[0]!r} version {snapshot[1]!r}")
        q = q.join(SnapshotMember, SnapshotMember.triplet_id == Triplet.id).where(SnapshotMember.snapshot_id == snap.id)
    elif not include_withdrawn:
        q = q.where(Triplet.withdrawn.is_(False))
    if domain is not None:
        q = q.where(Triplet.domain == domain)
    if level is not None:
        q = q.where(Triplet.level == level)
    return list(session.scalars(q))
