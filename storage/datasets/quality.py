"""Pre-label quality per model version, from what annotators did with the pre-labels (``geolabel status``, report).

For each model version whose prediction was pushed as a task's pre-label, over live (not retracted) annotations:

- ``acceptance_rate``: accepted / all annotations (the rest are "no target" or rejected, counted apart);
- ``mean_iou`` / ``median_iou``: IoU of the pre-label against the accepted mask (accepted annotations only). Taken
  from ``Annotation.iou_vs_prelabel`` (sync computes it); when that is missing and a blob store is given, computed
  from the two mask blobs;
- ``share_unchanged``: share of accepted annotations whose mask is the pre-label unchanged (same mask blob, or
  IoU 1);
- ``median_lead_time_s``: Label Studio's lead time (seconds the annotator spent), median over all annotations.

Annotations of tasks pushed without a pre-label are grouped under ``model_version = "(no pre-label)"``.
Rows are streamed from the database (``yield_per``); only per-version lists of floats are kept.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.blobs import BlobError, BlobStore
from storage.maskcodec import MaskCodecError, decode_mask
from storage.models import Annotation, LabelTask, Prediction, Verdict

NO_PRELABEL = "(no pre-label)"
UNCHANGED_IOU = 1.0 - 1e-9


@dataclass(frozen=True)
class PrelabelQuality:
    model_version: str
    n_annotations: int
    n_accepted: int
    n_no_target: int
    n_rejected: int
    acceptance_rate: float
    mean_iou: float | None
    median_iou: float | None
    share_unchanged: float | None
    median_lead_time_s: float | None
    n_iou: int = 0

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def prelabel_quality(
    session: Session, blobs: BlobStore | None = None, *, model_version: str | None = None
) -> list[PrelabelQuality]:
    """Pre-label quality per model version (one row each, sorted by version); ``model_version`` restricts it."""
    q = (
        sa.select(Annotation.verdict, Annotation.lead_time, Annotation.iou_vs_prelabel, Annotation.mask_sha256,
                  Prediction.model_version, Prediction.mask_sha256.label("pre_sha"))
        .join(LabelTask, Annotation.label_task_id == LabelTask.id)
        .outerjoin(Prediction, LabelTask.prediction_id == Prediction.id)
        .where(Annotation.retracted.is_(False))
        .order_by(Annotation.id)
    )
    if model_version is not None:
        q = q.where(Prediction.model_version == model_version)
    acc: dict[str, dict[str, Any]] = {}
    for r in session.execute(q.execution_options(yield_per=1000)):
        mv = r.model_version or NO_PRELABEL
        a = acc.setdefault(mv, {"n": 0, "verdicts": {v: 0 for v in Verdict}, "ious": [], "unchanged": 0,
                                "lead": []})
        a["n"] += 1
        verdict = Verdict(r.verdict)
        a["verdicts"][verdict] += 1
        if r.lead_time is not None:
            a["lead"].append(float(r.lead_time))
        if verdict != Verdict.ACCEPT or r.model_version is None:
            continue
        iou = r.iou_vs_prelabel
        if iou is None and blobs is not None and r.mask_sha256 and r.pre_sha:
            try:
                final = decode_mask(blobs.get(r.mask_sha256))
                pre = decode_mask(blobs.get(r.pre_sha), shape=final.shape)
                iou = _iou(final, pre)
            except (BlobError, MaskCodecError):
                iou = None  # an unreadable blob leaves this annotation out of the IoU figures
        same = r.mask_sha256 is not None and r.mask_sha256 == r.pre_sha
        if iou is not None:
            a["ious"].append(float(iou))
        if same or (iou is not None and iou >= UNCHANGED_IOU):
            a["unchanged"] += 1
    out = []
    for mv in sorted(acc):
        a = acc[mv]
        n_acc = a["verdicts"][Verdict.ACCEPT]
        has_pre = mv != NO_PRELABEL
        out.append(PrelabelQuality(
            model_version=mv, n_annotations=a["n"], n_accepted=n_acc, n_no_target=a["verdicts"][Verdict.NO_TARGET],
            n_rejected=a["verdicts"][Verdict.REJECT], acceptance_rate=n_acc / a["n"],
            mean_iou=float(np.mean(a["ious"])) if a["ious"] else None,
            median_iou=float(statistics.median(a["ious"])) if a["ious"] else None,
            share_unchanged=(a["unchanged"] / n_acc) if (n_acc and has_pre) else None,
            median_lead_time_s=float(statistics.median(a["lead"])) if a["lead"] else None, n_iou=len(a["ious"]),
        ))
    return out


# --- agreement between annotators (storage.consensus) ---------------------------------------------------------------


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


def consensus_quality(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Agreement per domain x level and per annotator, from the stored consensus (``item_consensus``).

    ``by_stratum`` (one row per domain x level): items with a consensus row, how many had several annotators, mean
    ``agreement`` / pairwise ``mask_iou`` / ``boundary_f`` / ``verdict_agreement`` over the multi-annotator items, and
    how many wait for or went through adjudication. ``by_annotator``: live annotations, and the mean IoU of the
    annotator's masks against their items' consensus (``Annotation.iou_vs_consensus``; a vote against an accepted
    consensus counts 0) over the items where a consensus was compared.
    """
    from storage.models import Item, ItemConsensus

    strata: dict[tuple[str, str], dict[str, Any]] = {}
    q = sa.select(Item.domain, Item.level, ItemConsensus).join(ItemConsensus, ItemConsensus.item_id == Item.id)
    for domain, level, c in session.execute(q.execution_options(yield_per=1000)):
        a = strata.setdefault((domain or "(none)", level or "L?"), {
            "n_items": 0, "n_multi": 0, "agreement": [], "mask_iou": [], "boundary_f": [], "verdict_agreement": [],
            "adjudication": 0, "adjudicated": 0, "pending": 0})  # fmt: skip
        a["n_items"] += 1
        a["adjudication"] += c.state == "adjudication"
        a["adjudicated"] += c.state == "adjudicated"
        a["pending"] += c.state == "pending"
        if c.n_annotators >= 2:
            a["n_multi"] += 1
            for k in ("agreement", "mask_iou", "boundary_f", "verdict_agreement"):
                if getattr(c, k) is not None:
                    a[k].append(float(getattr(c, k)))
    by_stratum = [
        {"domain": d, "level": lv, **{k: (_mean(v) if isinstance(v, list) else v) for k, v in a.items()}}
        for (d, lv), a in sorted(strata.items())
    ]
    people: dict[str, dict[str, Any]] = {}
    q2 = sa.select(Annotation.annotator, Annotation.iou_vs_consensus).where(Annotation.retracted.is_(False))
    for who, iou in session.execute(q2.execution_options(yield_per=1000)):
        p = people.setdefault(who or "(unknown)", {"n_annotations": 0, "ious": []})
        p["n_annotations"] += 1
        if iou is not None:
            p["ious"].append(float(iou))
    by_annotator = [
        {"annotator": who, "n_annotations": p["n_annotations"], "n_compared": len(p["ious"]),
         "mean_iou_vs_consensus": _mean(p["ious"])}
        for who, p in sorted(people.items())
    ]  # fmt: skip
    return {"by_stratum": by_stratum, "by_annotator": by_annotator}
