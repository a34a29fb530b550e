"""Repository layer: idempotent upserts for every record and the queries the flows need.

Every write is keyed on the table's natural unique key (see :mod:`storage.models`) and goes through
``INSERT … ON CONFLICT`` (SQLite and PostgreSQL dialects), so running a flow twice, or two workers racing on the same
record, ends with one row. Functions take a :class:`~sqlalchemy.orm.Session` and never commit: the caller's
``session_scope`` decides the transaction.

Conflict rules:

* image, item, label project: first write wins (``DO NOTHING``), the id of the existing row is returned.
* prediction (item, model_version): a stored *failed* prediction is replaced by a new one; a successful one is kept.
* label task (project, item): updated to the newest push (task id, pushed prediction).
* annotation (ls_annotation_id): updated when the incoming ``updated_at`` is newer (Label Studio edits); then the
  item's status and triplet are recomputed from its deciding annotation (the newest non-retracted one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from storage.models import (
    DECIDED,
    VERDICT_STATUS,
    Annotation,
    Image,
    Item,
    ItemStatus,
    LabelProject,
    LabelTask,
    Prediction,
    Snapshot,
    SnapshotMember,
    Triplet,
    Verdict,
    transition,
    utcnow,
)
from storage.records import (
    AnnotationRecord,
    ImageRecord,
    ItemRecord,
    LabelTaskRecord,
    PredictionRecord,
    TripletRecord,
)

CHUNK = 500


class SnapshotConflictError(ValueError):
    """A snapshot (name, version) already exists with different members: snapshots are immutable."""


def _insert(session: Session, model: type) -> Any:
    """The dialect's INSERT construct (it has ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - make_engine refuses other dialects
        raise ValueError(f"unsupported database dialect {name!r}")
    return insert(model.__table__)  # Core insert: skips the ORM bulk-insert layer (noticeably faster in bulk)


def _chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _check_records(records: Sequence[Any], cls: type) -> list[Any]:
    records = list(records)
    for r in records:
        if not isinstance(r, cls):
            raise TypeError(f"expected {cls.__name__} records, got {type(r).__name__}")
    return records


# --- images and items -----------------------------------------------------------------------------------------------


def upsert_images(session: Session, records: Sequence[ImageRecord]) -> dict[str, int]:
    """Register images (first write wins); returns ``{sha256: image id}`` for all of them."""
    records = _check_records(records, ImageRecord)
    if not records:
        return {}
    uniq = list({r.sha256: r for r in records}.values())
    stmt = _insert(session, Image).on_conflict_do_nothing(index_elements=["sha256"])
    now = utcnow()
    for chunk in _chunks(uniq):
        session.execute(stmt, [{**r.row(), "created_at": now} for r in chunk])
    out: dict[str, int] = {}
    shas = [r.sha256 for r in uniq]
    for chunk in _chunks(shas):
        out.update(session.execute(sa.select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))).tuples().all())
    return out


def upsert_image(session: Session, record: ImageRecord) -> int:
    return upsert_images(session, [record])[record.sha256]


def image_by_sha(session: Session, sha256: str) -> Image | None:
    return session.scalars(sa.select(Image).where(Image.sha256 == sha256)).one_or_none()


def upsert_items(session: Session, records: Sequence[ItemRecord]) -> dict[tuple[int, str], int]:
    """Register (image, query) items (first write wins); returns ``{(image_id, query): item id}``."""
    records = _check_records(records, ItemRecord)
    if not records:
        return {}
    uniq = list({(r.image_id, r.query): r for r in records}.values())
    stmt = _insert(session, Item).on_conflict_do_nothing(index_elements=["image_id", "query"])
    now = utcnow()
    for chunk in _chunks(uniq):
        session.execute(
            stmt, [{**r.row(), "status": ItemStatus.NEW, "created_at": now, "updated_at": now} for r in chunk]
        )
    wanted = {(r.image_id, r.query) for r in uniq}
    out: dict[tuple[int, str], int] = {}
    image_ids = sorted({r.image_id for r in uniq})
    for chunk in _chunks(image_ids):
        q = sa.select(Item.image_id, Item.query, Item.id).where(Item.image_id.in_(chunk))
        for image_id, query, item_id in session.execute(q):
            if (image_id, query) in wanted:
                out[(image_id, query)] = item_id
    return out


def upsert_item(session: Session, record: ItemRecord) -> int:
    return upsert_items(session, [record])[(record.image_id, record.query)]


def set_item_status(session: Session, item_id: int, status: ItemStatus | str) -> Item:
    """Move one item through the state machine (raises ``IllegalTransitionError``)."""
    item = session.get(Item, item_id, with_for_update=_for_update(session))
    if item is None:
        raise LookupError(f"no item {item_id}")
    return transition(item, status)


def _for_update(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def items_awaiting_prediction(
    session: Session,
    model_version: str,
    *,
    limit: int | None = None,
    retry_failed: bool = False,
    statuses: Iterable[ItemStatus] = (ItemStatus.NEW, ItemStatus.PREDICTED),
) -> list[Item]:
    """Items (with their image loaded) that have no prediction for ``model_version`` yet, oldest first.

    ``retry_failed`` also returns items whose prediction for that version failed (its ``error`` is set).
    """
    pred = sa.select(Prediction.id).where(Prediction.item_id == Item.id, Prediction.model_version == model_version)
    if retry_failed:
        pred = pred.where(Prediction.error.is_(None))
    q = (
        sa.select(Item)
        .options(joinedload(Item.image))
        .where(~pred.exists(), Item.status.in_(list(statuses)))
        .order_by(Item.id)
    )
    if limit is not None:
        q = q.limit(int(limit))
    return list(session.scalars(q))


# --- predictions ----------------------------------------------------------------------------------------------------


def upsert_predictions(session: Session, records: Sequence[PredictionRecord]) -> dict[tuple[int, str], int]:
    """Store predictions; returns ``{(item_id, model_version): prediction id}``.

    Items with a successful prediction move new -> predicted.

    A stored failed prediction for the same (item, model_version) is replaced; a stored successful one is kept.
    """
    records = _check_records(records, PredictionRecord)
    if not records:
        return {}
    versions = {r.model_version for r in records}
    uniq = list({(r.item_id, r.model_version): r for r in records}.values())
    ins = _insert(session, Prediction)
    cols = [c.name for c in Prediction.__table__.columns if c.name not in ("id", "item_id", "model_version")]
    stmt = ins.on_conflict_do_update(
        index_elements=["item_id", "model_version"],
        set_={c: ins.excluded[c] for c in cols},
        where=Prediction.__table__.c.error.is_not(None),
    )
    now = utcnow()
    for chunk in _chunks(uniq):
        session.execute(stmt, [{**r.row(), "created_at": now} for r in chunk])
    ok_items = sorted({r.item_id for r in uniq if r.error is None})
    for chunk in _chunks(ok_items):
        session.execute(
            sa.update(Item)
            .where(Item.id.in_(chunk), Item.status == ItemStatus.NEW)
            .values(status=ItemStatus.PREDICTED, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    out: dict[tuple[int, str], int] = {}
    item_ids = sorted({r.item_id for r in uniq})
    for chunk in _chunks(item_ids):
        q = sa.select(Prediction.item_id, Prediction.model_version, Prediction.id).where(
            Prediction.item_id.in_(chunk), Prediction.model_version.in_(versions)
        )
        for item_id, mv, pid in session.execute(q):
            out[(item_id, mv)] = pid
    return out


def upsert_prediction(session: Session, record: PredictionRecord) -> int:
    return upsert_predictions(session, [record])[(record.item_id, record.model_version)]


def prediction_for(session: Session, item_id: int, model_version: str) -> Prediction | None:
    return session.scalars(
        sa.select(Prediction).where(Prediction.item_id == item_id, Prediction.model_version == model_version)
    ).one_or_none()


# --- Label Studio projects and tasks --------------------------------------------------------------------------------


def upsert_label_project(session: Session, label_studio_url: str, ls_project_id: int, title: str | None = None) -> int:
    """Register a Label Studio project; returns its row id (stable across runs)."""
    if not isinstance(ls_project_id, int) or ls_project_id < 1:
        raise ValueError(f"ls_project_id must be a positive integer, got {ls_project_id!r}")
    url = label_studio_url.rstrip("/")
    stmt = _insert(session, LabelProject).on_conflict_do_nothing(index_elements=["label_studio_url", "ls_project_id"])
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
    records = _check_records(records, LabelTaskRecord)
    if not records:
        return {}
    uniq = list({(r.label_project_id, r.item_id): r for r in records}.values())
    ins = _insert(session, LabelTask)
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
    for chunk in _chunks(uniq):
        session.execute(stmt, [{**r.row(), "pushed_at": now} for r in chunk])
    item_ids = sorted({r.item_id for r in uniq})
    for chunk in _chunks(item_ids):
        session.execute(
            sa.update(Item)
            .where(Item.id.in_(chunk), Item.status.in_([ItemStatus.NEW, ItemStatus.PREDICTED]))
            .values(status=ItemStatus.IN_REVIEW, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    out: dict[int, int] = {}
    projects = sorted({r.label_project_id for r in uniq})
    for chunk in _chunks(item_ids):
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


# --- annotations, item decisions and triplets -----------------------------------------------------------------------


def upsert_annotations(session: Session, records: Sequence[AnnotationRecord]) -> dict[int, int]:
    """Store annotations (a newer ``updated_at`` replaces the stored one) and re-decide the items they touch.

    Returns ``{ls_annotation_id: annotation id}``. Each touched item's status follows its deciding annotation and
    its accepted triplet is created, updated or withdrawn to match.
    """
    records = _check_records(records, AnnotationRecord)
    if not records:
        return {}
    uniq: dict[int, AnnotationRecord] = {}
    for r in records:  # the same annotation twice in one batch: keep the newest
        if r.ls_annotation_id not in uniq or r.updated_at >= uniq[r.ls_annotation_id].updated_at:
            uniq[r.ls_annotation_id] = r
    task_ids = sorted({r.label_task_id for r in uniq.values()})
    task_item: dict[int, int] = {}
    for chunk in _chunks(task_ids):
        task_item.update(
            session.execute(sa.select(LabelTask.id, LabelTask.item_id).where(LabelTask.id.in_(chunk))).tuples().all()
        )
    missing = sorted(set(task_ids) - set(task_item))
    if missing:
        raise LookupError(f"annotations refer to unknown label tasks {missing[:10]}: record the tasks first")
    ins = _insert(session, Annotation)
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
    for chunk in _chunks(rows):
        session.execute(stmt, chunk)
    session.expire_all()
    redecide_items(session, sorted({row["item_id"] for row in rows}))
    out: dict[int, int] = {}
    ids = sorted(uniq)
    for chunk in _chunks(ids):
        q = sa.select(Annotation.ls_annotation_id, Annotation.id).where(Annotation.ls_annotation_id.in_(chunk))
        out.update(session.execute(q).tuples().all())
    return out


def upsert_annotation(session: Session, record: AnnotationRecord) -> int:
    return upsert_annotations(session, [record])[record.ls_annotation_id]


def retract_annotations(session: Session, ls_annotation_ids: Iterable[int]) -> int:
    """Mark annotations deleted in Label Studio as retracted and re-decide their items; returns how many changed."""
    ids = sorted({int(i) for i in ls_annotation_ids})
    if not ids:
        return 0
    changed = 0
    items: set[int] = set()
    for chunk in _chunks(ids):
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
    redecide_items(session, sorted(items))
    return changed


def deciding_annotation(session: Session, item_id: int) -> Annotation | None:
    """The newest non-retracted annotation of the item (by updated_at, then id), or None."""
    return session.scalars(
        sa.select(Annotation)
        .where(Annotation.item_id == item_id, Annotation.retracted.is_(False))
        .order_by(Annotation.updated_at.desc(), Annotation.id.desc())
        .limit(1)
    ).one_or_none()


def redecide_items(session: Session, item_ids: Sequence[int]) -> None:
    """Bring each item's status and triplet in line with its deciding annotation (see the state machine).

    Set-based: one query for the items, one for their live annotations, then bulk updates -- so a sync of
    thousands of annotations costs a few statements per 500 items, not a few per item.
    """
    lock = _for_update(session)
    for chunk in _chunks(sorted(set(item_ids))):
        q = sa.select(Item).where(Item.id.in_(chunk)).order_by(Item.id)
        items = list(session.scalars(q.with_for_update() if lock else q))
        live = session.execute(
            sa.select(
                Annotation.id, Annotation.item_id, Annotation.verdict, Annotation.mask_sha256, Annotation.updated_at
            ).where(Annotation.item_id.in_(chunk), Annotation.retracted.is_(False))
        ).all()
        decider: dict[int, Any] = {}
        for a in live:
            best = decider.get(a.item_id)
            if best is None or (a.updated_at, a.id) > (best.updated_at, best.id):
                decider[a.item_id] = a
        triplets: list[dict[str, Any]] = []
        for item in items:
            d = decider.get(item.id)
            target = VERDICT_STATUS[Verdict(d.verdict)] if d is not None else ItemStatus.IN_REVIEW
            if item.status != target:
                if item.status != ItemStatus.IN_REVIEW:
                    transition(item, ItemStatus.IN_REVIEW)
                transition(item, target)
            if d is not None and d.verdict == Verdict.ACCEPT:
                triplets.append(
                    {
                        "annotation_id": d.id,
                        "item_id": item.id,
                        "image_id": item.image_id,
                        "query": item.query,
                        "mask_sha256": d.mask_sha256,
                        "domain": item.domain,
                        "level": item.level,
                    }
                )
        session.flush()
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
    ins = _insert(session, Triplet)
    stmt = ins.on_conflict_do_update(
        index_elements=["annotation_id"],
        set_={
            "mask_sha256": ins.excluded.mask_sha256,
            "query": ins.excluded.query,
            "domain": ins.excluded.domain,
            "level": ins.excluded.level,
            "withdrawn": sa.false(),
        },
    )
    now = utcnow()
    for chunk in _chunks(rows):
        session.execute(stmt, [{**r, "withdrawn": False, "created_at": now} for r in chunk])


def upsert_triplets(session: Session, records: Sequence[TripletRecord]) -> dict[int, int]:
    """Bulk import of accepted triplets (keyed by annotation); returns ``{annotation_id: triplet id}``."""
    records = _check_records(records, TripletRecord)
    if not records:
        return {}
    rows = list({r.annotation_id: r.row() for r in records}.values())
    _upsert_triplet_rows(session, rows)
    out: dict[int, int] = {}
    ids = sorted(r["annotation_id"] for r in rows)
    for chunk in _chunks(ids):
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
    project = session.get(LabelProject, label_project_id, with_for_update=_for_update(session))
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


# --- snapshots ------------------------------------------------------------------------------------------------------


def manifest_sha256(entries: Sequence[dict[str, Any]]) -> str:
    """Hash of a snapshot manifest: its entries sorted by triplet id, canonical JSON."""
    canon = json.dumps(sorted(entries, key=lambda e: e["triplet_id"]), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def get_snapshot(session: Session, name: str, version: str) -> Snapshot | None:
    return session.scalars(
        sa.select(Snapshot).where(Snapshot.name == name, Snapshot.version == str(version))
    ).one_or_none()


def create_snapshot(
    session: Session,
    name: str,
    version: str,
    members: Sequence[tuple[int, str]],
    *,
    description: str | None = None,
    params: dict[str, Any] | None = None,
) -> Snapshot:
    """Freeze ``members`` (triplet id, split) as snapshot ``name``/``version``.

    Idempotent: the same members again return the existing snapshot; different members raise
    :class:`SnapshotConflictError` (bump the version instead).
    """
    if not name or not str(version):
        raise ValueError("a snapshot needs a name and a version")
    pairs = {int(t): str(s) for t, s in members}
    if len(pairs) != len(list(members)):
        raise ValueError("a triplet appears twice in the snapshot members")
    if not pairs:
        raise ValueError("a snapshot needs at least one triplet")
    rows = session.execute(
        sa.select(Triplet.id, Image.sha256, Triplet.mask_sha256, Triplet.withdrawn)
        .join(Image, Image.id == Triplet.image_id)
        .where(Triplet.id.in_(list(pairs)))
    ).all()
    found = {r[0]: r for r in rows}
    missing = sorted(set(pairs) - set(found))
    if missing:
        raise LookupError(f"snapshot members refer to unknown triplets {missing[:10]}")
    withdrawn = sorted(t for t, r in found.items() if r[3])
    if withdrawn:
        raise ValueError(f"triplets {withdrawn[:10]} were withdrawn (their annotation was retracted)")
    entries = [
        {"triplet_id": t, "split": pairs[t], "image_sha256": found[t][1], "mask_sha256": found[t][2]} for t in pairs
    ]
    digest = manifest_sha256(entries)
    existing = get_snapshot(session, name, str(version))
    if existing is not None:
        if existing.manifest_sha256 != digest:
            raise SnapshotConflictError(
                f"snapshot {name!r} version {version!r} already exists with other members; snapshots are immutable"
            )
        return existing
    snap = Snapshot(name=name, version=str(version), manifest_sha256=digest, description=description, params=params)
    snap.members = [SnapshotMember(**e) for e in sorted(entries, key=lambda e: e["triplet_id"])]
    session.add(snap)
    session.flush()
    return snap


def snapshot_manifest(snapshot: Snapshot) -> dict[str, Any]:
    """A JSON-able manifest: name, version, created, manifest hash, and the member entries."""
    return {
        "name": snapshot.name,
        "version": snapshot.version,
        "created_at": snapshot.created_at.isoformat(),
        "manifest_sha256": snapshot.manifest_sha256,
        "description": snapshot.description,
        "params": snapshot.params,
        "members": [
            {
                "triplet_id": m.triplet_id,
                "split": m.split,
                "image_sha256": m.image_sha256,
                "mask_sha256": m.mask_sha256,
            }
            for m in snapshot.members
        ],
    }


# --- counts (status pages, tests) -----------------------------------------------------------------------------------


def item_status_counts(session: Session) -> dict[str, int]:
    q = sa.select(Item.status, sa.func.count()).group_by(Item.status)
    return {ItemStatus(s).value: n for s, n in session.execute(q)}


def count_rows(session: Session, model: type) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
