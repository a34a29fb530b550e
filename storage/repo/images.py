"""Images and (image, query) items: registration (first write wins) and the items awaiting a prediction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from storage.models import Image, Item, ItemStatus, Prediction, transition, utcnow
from storage.records import ImageRecord, ItemRecord
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


def upsert_image(session: Session, record: ImageRecord) -> int:
    return upsert_images(session, [record])[record.sha256]


def image_by_sha(session: Session, sha256: str) -> Image | None:
    return session.scalars(sa.select(Image).where(Image.sha256 == sha256)).one_or_none()


def upsert_items(session: Session, records: Sequence[ItemRecord]) -> dict[tuple[int, str], int]:
    """Register (image, query) items (first write wins); returns ``{(image_id, query): item id}``."""
    records = check_records(records, ItemRecord)
    if not records:
        return {}
    uniq = list({(r.image_id, r.query): r for r in records}.values())
    stmt = dialect_insert(session, Item).on_conflict_do_nothing(index_elements=["image_id", "query"])
    now = utcnow()
    for chunk in chunked(uniq):
        session.execute(
            stmt, [{**r.row(), "status": ItemStatus.NEW, "created_at": now, "updated_at": now} for r in chunk]
        )
    wanted = {(r.image_id, r.query) for r in uniq}
    out: dict[tuple[int, str], int] = {}
    image_ids = sorted({r.image_id for r in uniq})
    for chunk in chunked(image_ids):
        q = sa.select(Item.image_id, Item.query, Item.id).where(Item.image_id.in_(chunk))
        for image_id, query, item_id in session.execute(q):
            if (image_id, query) in wanted:
                out[(image_id, query)] = item_id
    return out


def upsert_item(session: Session, record: ItemRecord) -> int:
    return upsert_items(session, [record])[(record.image_id, record.query)]


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


def image_sources(session: Session, image_ids: Iterable[int]) -> list[tuple[str, str, str | None]]:
    """(sha256, uri, format) of the images ``image_ids`` (what display renditions are made from)."""
    out: list[tuple[str, str, str | None]] = []
    for chunk in chunked(sorted(set(image_ids))):
        q = sa.select(Image.sha256, Image.uri, Image.format).where(Image.id.in_(chunk))
        out += [(str(s), str(u), f) for s, u, f in session.execute(q)]
    return out


def item_image_queries(session: Session) -> list[tuple[int, str, str]]:
    """(item id, query, image uri) of every item."""
    q = sa.select(Item.id, Item.query, Image.uri).join(Image, Item.image_id == Image.id)
    return [(int(i), str(qq), str(u)) for i, qq, u in session.execute(q)]
