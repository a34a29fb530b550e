"""Seed a real database (SQLite file or PostgreSQL) with the rows the labeling loop would have written:
images, items, a Label Studio project, predictions, tasks, annotations (accept / no target / reject) and triplets.
Masks go through the real codec into the real blob store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image as PILImage

from storage.blobs import BlobStore
from storage.maskcodec import encode_mask
from storage.models import (
    Annotation,
    Image,
    Item,
    ItemStatus,
    LabelProject,
    LabelTask,
    Prediction,
    Triplet,
    Verdict,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    triplet_masks: dict[int, np.ndarray]  # triplet id -> the accepted mask
    n_no_target: int
    n_rejected: int


def seed_from_bench(session, blobs: BlobStore, bench, model_version: str = "geoseg-test-v1",
                    every_no_target: int = 7, every_reject: int = 11) -> Seeded:
    """One item per benchmark sample; sample i is rejected when i % every_reject == 5, "no target" when
    i % every_no_target == 3, else accepted with the benchmark mask (pre-label: the mask shifted by i % 3 px,
    so some are accepted unchanged)."""
    proj = LabelProject(label_studio_url="http://127.0.0.1:8080", ls_project_id=1, title="test")
    session.add(proj)
    session.flush()
    masks: dict[int, np.ndarray] = {}
    n_nt = n_rej = 0
    for i, s in enumerate(bench.samples):
        data = Path(s.image_path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        img = session.scalar(sa.select(Image).where(Image.sha256 == sha))
        if img is None:
            img = Image(sha256=sha, uri=str(Path(s.image_path).resolve()), width=s.width, height=s.height,
                        format="PNG", source="test")
            session.add(img)
            session.flush()
        item = Item(image_id=img.id, query=s.query, level=s.level, domain=s.domain, status=ItemStatus.IN_REVIEW)
        session.add(item)
        session.flush()
        gt = s.load_mask()
        pre = np.roll(gt, i % 3, axis=1)
        pred = Prediction(item_id=item.id, model_version=model_version, route="text", phrase=s.query.split()[-1],
                          mask_sha256=blobs.put(encode_mask(pre)), mask_area=int(pre.sum()))
        session.add(pred)
        session.flush()
        task = LabelTask(label_project_id=proj.id, item_id=item.id, ls_task_id=1000 + i, prediction_id=pred.id)
        session.add(task)
        session.flush()
        if i % every_reject == 5:
            verdict, mask_sha = Verdict.REJECT, None
            n_rej += 1
        elif i % every_no_target == 3:
            verdict, mask_sha = Verdict.NO_TARGET, None
            n_nt += 1
        else:
            verdict, mask_sha = Verdict.ACCEPT, blobs.put(encode_mask(gt))
        inter, union = np.count_nonzero(pre & gt), np.count_nonzero(pre | gt)
        ann = Annotation(ls_annotation_id=5000 + i, label_task_id=task.id, item_id=item.id, verdict=verdict,
                         mask_sha256=mask_sha, mask_area=int(gt.sum()) if mask_sha else None, annotator="a@x",
                         lead_time=10.0 + i, iou_vs_prelabel=(inter / union if union else 1.0) if mask_sha else None,
                         created_at=T0 + timedelta(days=i), updated_at=T0 + timedelta(days=i))
        session.add(ann)
        session.flush()
        item.status = {Verdict.ACCEPT: ItemStatus.ACCEPTED, Verdict.REJECT: ItemStatus.REJECTED,
                       Verdict.NO_TARGET: ItemStatus.NO_TARGET}[verdict]
        if verdict == Verdict.ACCEPT:
            t = Triplet(annotation_id=ann.id, item_id=item.id, image_id=img.id, query=s.query, mask_sha256=mask_sha,
                        domain=s.domain, level=s.level, created_at=T0 + timedelta(days=i))
            session.add(t)
            session.flush()
            masks[t.id] = gt
    return Seeded(masks, n_nt, n_rej)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    PILImage.fromarray(rgb).save(path)
    return path
