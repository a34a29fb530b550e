"""What ``geolabel calibrate`` needs from the database: per accepted triplet, the prediction the pipeline stored for
its item (raw boxes, phrase, refined box, fused and route mask blobs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import LabelTask, Prediction, Triplet
from storage.repo.base import chunked

COLUMNS = ("model_version", "boxes", "box", "refined_box", "phrase", "mask_sha256", "point_mask_sha256",
           "text_mask_sha256", "route", "valid_point", "valid_text")  # fmt: skip


def stored_predictions(
    session: Session, triplet_ids: Sequence[int], model_version: str | None = None
) -> dict[int, dict[str, Any]]:
    """``{triplet id: prediction fields}`` for the triplets' items: of ``model_version`` when given, else the newest
    successful prediction pushed as a pre-label for the item (in any of its tasks). Triplets without one are absent."""
    out: dict[int, dict[str, Any]] = {}
    cols = [getattr(Prediction, c) for c in COLUMNS]
    for chunk in chunked(sorted({int(t) for t in triplet_ids})):
        if model_version is not None:
            q = (sa.select(Triplet.id, Prediction.id.label("pid"), *cols)
                 .join(Prediction, Prediction.item_id == Triplet.item_id)
                 .where(Triplet.id.in_(chunk), Prediction.model_version == model_version, Prediction.error.is_(None)))
        else:
            q = (sa.select(Triplet.id, Prediction.id.label("pid"), *cols)
                 .join(LabelTask, LabelTask.item_id == Triplet.item_id)
                 .join(Prediction, Prediction.id == LabelTask.prediction_id)
                 .where(Triplet.id.in_(chunk), Prediction.error.is_(None)))  # fmt: skip
        for r in session.execute(q.order_by(Triplet.id, Prediction.id)):
            out[int(r.id)] = {c: getattr(r, c) for c in COLUMNS}  # the newest prediction (highest id) wins
    return out


def stored_masks(blobs: Any, stored: dict[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
    """The stored prediction's fused and route masks, decoded (None where not stored)."""
    from storage.maskcodec import decode_mask

    names = {"mask": "mask_sha256", "mask_point": "point_mask_sha256", "mask_text": "text_mask_sha256"}
    return {k: (decode_mask(blobs.get(stored[c]), shape=shape) if stored.get(c) else None) for k, c in names.items()}
