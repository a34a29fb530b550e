"""Images and (image, query) items: registration (first write wins) and the items awaiting a prediction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from storage.models import Image, Item, ItemStatus, Prediction, transition, utcnow
from storage.records import ImageRecord, ImageWork, ItemRecord, WorkItem
from storage.repo.base import check_records, chunked, dialect_insert, row_locks


def upsert_images(session: Session, records: Sequence[ImageRecord]) -> dict[str, int]:
    """Register images (first write wins); returns ``{sha256: image id}`` for all of them."""
    records = check_records(records, ImageRecord)
    if not records:
        return {}
    uniq = list({r.sha256: r for r in records}.values())
    stmt = dialect_insert(session, Image).on_conflict_do_nothing(index_elements=["sha256"])
    now = utcnow()
    for chunk in chunked(uniq):
        session.execute(stmt, [{**r.row(), "created_at": now} for r in chunk])
    out: dict[str, int] = {}
    shas = [r.sha256 for r in uniq]
    for chunk in chunked(shas):
        out.update(session.execute(sa.select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))).tuples().all())
    return out


def image_by_sha(session: Session, sha256: str) -> Image | None:
    return session.scalars(sa.select(Image).where(Image.sha256 == sha256)).one_or_none()


def known_image_shas(session: Session, shas: Sequence[str]) -> set[str]:
    """The subset of ``shas`` already registered."""
    out: set[str] = set()
    for chunk in chunked(sorted(set(shas))):
        out.update(session.scalars(sa.select(Image.sha256).where(Image.sha256.in_(chunk))))
    return out


def item_keys(session: Session, image_ids: Sequence[int]) -> set[tuple[int, str]]:
    """``(image_id, query_key)`` of every item on these images."""
    out: set[tuple[int, str]] = set()
    for chunk in chunked(sorted(set(image_ids))):
        q = sa.select(Item.image_id, Item.query_key).where(Item.image_id.in_(chunk))
        out.update(session.execute(q).tuples())
    return out


def items_on_images(session: Session, image_ids: Sequence[int]) -> dict[tuple[int, str], Item]:
    """Every item on these images by ``(image_id, query_key)``."""
    out: dict[tuple[int, str], Item] = {}
    for chunk in chunked(sorted(set(image_ids))):
        for it in session.scalars(sa.select(Item).where(Item.image_id.in_(chunk))):
            out[(it.image_id, it.query_key)] = it
    return out


def upsert_items(session: Session, records: Sequence[ItemRecord]) -> dict[tuple[int, str], int]:
    """Register (image, query) items, one per ``(image_id, query_key)`` (first write wins: an existing item keeps its
    text, level and domain); returns ``{(image_id, record.query): item id}`` for every record."""
    records = check_records(records, ItemRecord)
    if not records:
        return {}
    uniq = list({(r.image_id, r.query_key): r for r in records}.values())
    stmt = dialect_insert(session, Item).on_conflict_do_nothing(index_elements=["image_id", "query_key"])
    now = utcnow()
    for chunk in chunked(uniq):
        session.execute(
            stmt, [{**r.row(), "status": ItemStatus.NEW, "created_at": now, "updated_at": now} for r in chunk]
        )
    by_key: dict[tuple[int, str], int] = {}
    wanted = {(r.image_id, r.query_key) for r in uniq}
    for chunk in chunked(sorted({r.image_id for r in uniq})):
        q = sa.select(Item.image_id, Item.query_key, Item.id).where(Item.image_id.in_(chunk))
        for image_id, key, item_id in session.execute(q):
            if (image_id, key) in wanted:
                by_key[(image_id, key)] = item_id
    return {(r.image_id, r.query): by_key[(r.image_id, r.query_key)] for r in records}


def set_item_status(session: Session, item_id: int, status: ItemStatus | str) -> Item:
    """Move one item through the state machine (raises ``IllegalTransitionError``)."""
    item = session.get(Item, item_id, with_for_update=row_locks(session))
    if item is None:
        raise LookupError(f"no item {item_id}")
    return transition(item, status)


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


def get_images(session: Session, image_ids: Iterable[int] | None = None) -> list[Image]:
    """Registered images (all, or these ids), by id."""
    q = sa.select(Image).order_by(Image.id)
    if image_ids is not None:
        q = q.where(Image.id.in_(list(image_ids)))
    return list(session.scalars(q))


def image_ids_by_sha(session: Session, shas: Iterable[str]) -> dict[str, int]:
    """``{sha256: image id}`` for the registered ones among ``shas``."""
    out: dict[str, int] = {}
    for chunk in chunked(sorted({s for s in shas if isinstance(s, str)})):
        out.update(session.execute(sa.select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))).tuples().all())
    return out


def item_work(session: Session, item_ids: Sequence[int]) -> dict[int, str]:
    """item id -> what was done on it ("2 prediction(s), 1 review task(s)"), for the items that have any work."""
    from storage.models import Annotation, LabelTask

    why: dict[int, list[str]] = {}
    for model, label in ((Prediction, "prediction"), (LabelTask, "review task"), (Annotation, "annotation")):
        for chunk in chunked(sorted(set(item_ids))):
            q = sa.select(model.item_id, sa.func.count()).where(model.item_id.in_(chunk)).group_by(model.item_id)
            for iid, n in session.execute(q):
                why.setdefault(iid, []).append(f"{n} {label}(s)")
    return {k: ", ".join(v) for k, v in why.items()}


def delete_untouched_items(session: Session, item_ids: Sequence[int]) -> list[int]:
    """Delete the items among ``item_ids`` that have no prediction, label task or annotation; returns their ids.

    Items with work on them are never deleted (the check and the delete run in the caller's transaction; on
    PostgreSQL the items are locked first, so a prediction committed meanwhile makes the item stay)."""
    ids = sorted(set(item_ids))
    if not ids:
        return []
    if row_locks(session):
        session.execute(sa.select(Item.id).where(Item.id.in_(ids)).with_for_update())
    work = item_work(session, ids)
    gone = [i for i in ids if i not in work]
    for chunk in chunked(gone):
        session.execute(sa.delete(Item).where(Item.id.in_(chunk)).execution_options(synchronize_session="fetch"))
    return gone


def pending_image_work(
    session: Session, model_version: str, *, limit: int | None = None, retry_failed: bool = False
) -> list[ImageWork]:
    """:func:`items_awaiting_prediction` grouped by image (first-seen order) as plain read records."""
    by_image: dict[int, tuple[tuple[str, str], list[WorkItem]]] = {}
    for item in items_awaiting_prediction(session, model_version, limit=limit, retry_failed=retry_failed):
        img = item.image
        by_image.setdefault(img.id, ((img.sha256, img.uri), []))[1].append(WorkItem(item.id, item.query))
    return [ImageWork(iid, sha, uri, tuple(items)) for iid, ((sha, uri), items) in by_image.items()]


def image_refs(session: Session, image_ids: Iterable[int] | None = None) -> list[tuple[str, str, str | None, int]]:
    """``(sha256, uri, format, id)`` of the registered images (all, or these ids), by id: what renditions need."""
    cols = (Image.sha256, Image.uri, Image.format, Image.id)
    if image_ids is None:
        return [tuple(r) for r in session.execute(sa.select(*cols).order_by(Image.id))]
    out: list[tuple[str, str, str | None, int]] = []
    for chunk in chunked(sorted(set(image_ids))):
        out += [tuple(r) for r in session.execute(sa.select(*cols).where(Image.id.in_(chunk)).order_by(Image.id))]
    return out


def item_image_queries(session: Session) -> list[tuple[int, str, str]]:
    """(item id, query, image uri) of every item."""
    q = sa.select(Item.id, Item.query, Image.uri).join(Image, Item.image_id == Image.id)
    return [(int(i), str(qq), str(u)) for i, qq, u in session.execute(q)]
