"""Row counts for status pages and tests."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import Item, ItemStatus


def item_status_counts(session: Session) -> dict[str, int]:
    q = sa.select(Item.status, sa.func.count()).group_by(Item.status)
    return {ItemStatus(s).value: n for s, n in session.execute(q)}


def count_rows(session: Session, model: type) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()


def count_predictions(session: Session, model_version: str) -> int:
    """Successful predictions of ``model_version`` (the CLI's progress bars)."""
    from storage.models import Prediction

    q = sa.select(sa.func.count()).select_from(Prediction)
    q = q.where(Prediction.model_version == model_version, Prediction.error.is_(None))
    return int(session.execute(q).scalar_one())
