"""Predictions per (item, model_version): a failed one is replaced, a successful one kept."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import Item, ItemStatus, Prediction, utcnow
from storage.records import PredictionRecord
from storage.repo.base import check_records, chunked, dialect_insert


def upsert_predictions(session: Session, records: Sequence[PredictionRecord]) -> dict[tuple[int, str], int]:
    """Store predictions; returns ``{(item_id, model_version): prediction id}``.

    Items with a successful prediction move new -> predicted.

    A stored failed prediction for the same (item, model_version) is replaced; a stored successful one is kept.
    """
    records = check_records(records, PredictionRecord)
    if not records:
        return {}
    versions = {r.model_version for r in records}
    uniq = list({(r.item_id, r.model_version): r for r in records}.values())
    ins = dialect_insert(session, Prediction)
    cols = [c.name for c in Prediction.__table__.columns if c.name not in ("id", "item_id", "model_version")]
    stmt = ins.on_conflict_do_update(
        index_elements=["item_id", "model_version"],
        set_={c: ins.excluded[c] for c in cols},
        where=Prediction.__table__.c.error.is_not(None),
    )
    now = utcnow()
    for chunk in chunked(uniq):
        session.execute(stmt, [{**r.row(), "created_at": now} for r in chunk])
    ok_items = sorted({r.item_id for r in uniq if r.error is None})
    for chunk in chunked(ok_items):
        session.execute(
            sa.update(Item)
            .where(Item.id.in_(chunk), Item.status == ItemStatus.NEW)
            .values(status=ItemStatus.PREDICTED, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    out: dict[tuple[int, str], int] = {}
    item_ids = sorted({r.item_id for r in uniq})
    for chunk in chunked(item_ids):
        q = sa.select(Prediction.item_id, Prediction.model_version, Prediction.id).where(
            Prediction.item_id.in_(chunk), Prediction.model_version.in_(versions)
        )
        for item_id, mv, pid in session.execute(q):
            out[(item_id, mv)] = pid
    return out


def prediction_for(session: Session, item_id: int, model_version: str) -> Prediction | None:
    return session.scalars(
        sa.select(Prediction).where(Prediction.item_id == item_id, Prediction.model_version == model_version)
    ).one_or_none()
