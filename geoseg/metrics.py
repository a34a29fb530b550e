"""Segmentation metrics of GeoSeg §5.1 (IoU, Dice, pixel accuracy, precision, recall, specificity, Boundary F)
and their aggregation: the mean over samples and the cumulative IoU (sum of intersections / sum of unions),
overall and per group (domain, level)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

METRIC_NAMES: tuple[str, ...] = (
    "iou", "dice", "accuracy", "precision", "recall", "specificity", "boundary_f",
)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred), np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"masks must be non-empty 2-D arrays, got shape {p.shape}")
    return p.astype(bool, copy=False), g.astype(bool, copy=False)


@dataclass(frozen=True)
class Confusion:
    """Pixel counts of a binary prediction against ground truth."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, pred: np.ndarray, gt: np.ndarray) -> Confusion:
        p, g = _pair(pred, gt)
        tp = int(np.count_nonzero(p & g))
        ps, gs = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        return cls(tp=tp, fp=ps - tp, fn=gs - tp, tn=p.size - ps - gs + tp)

    @property
    def intersection(self) -> int:
        return self.tp

    @property
    def union(self) -> int:
        return self.tp + self.fp + self.fn


def _ratio(num: int, den: int, equal: bool) -> float:
    """num/den, with 0/0 defined as 1.0 when prediction equals ground truth, else 0.0."""
    if den == 0:
        return 1.0 if equal else 0.0
    return num / den


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two same-shape binary masks, |a & b| / |a | b|; two empty masks are identical: 1.0."""
    c = Confusion.of(a, b)
    return _ratio(c.intersection, c.union, c.fp == 0 and c.fn == 0)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: mask AND NOT erode(mask, 3x3 square), the image border counted as background."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3), dtype=bool), border_value=0)


def default_theta(shape: tuple[int, int]) -> int:
    """Boundary F tolerance: ceil(0.0075 * image diagonal) pixels."""
    return int(math.ceil(0.0075 * math.hypot(shape[0], shape[1])))


def boundary_f(pred: np.ndarray, gt: np.ndarray, theta: float | None = None) -> float:
    """Boundary F-measure with distance tolerance ``theta`` px (Euclidean, <= theta counts as a match).

    P = share of prediction-boundary pixels within theta of the ground-truth boundary, R likewise the other way,
    F = 2PR/(P+R). Both boundaries empty -> 1.0; exactly one empty -> 0.0.
    """
    p, g = _pair(pred, gt)
    th = default_theta(p.shape) if theta is None else float(theta)
    if not th >= 0:
        raise ValueError(f"theta must be >= 0, got {theta}")
    # Everything happens inside the bounding window of both masks, padded by one pixel: outside it both masks are
    # background, so erosion (border = background) and the distance transforms there are exact for every boundary
    # pixel, and the full image is never transformed.
    both = p | g
    rows, cols = np.nonzero(both.any(axis=1))[0], np.nonzero(both.any(axis=0))[0]
    if rows.size == 0:
        return 1.0
    win = (slice(max(int(rows[0]) - 1, 0), int(rows[-1]) + 2), slice(max(int(cols[0]) - 1, 0), int(cols[-1]) + 2))
    bpw, bgw = boundary(p[win]), boundary(g[win])
    n_p, n_g = int(np.count_nonzero(bpw)), int(np.count_nonzero(bgw))
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    d_to_g = ndimage.distance_transform_edt(~bgw)
    d_to_p = ndimage.distance_transform_edt(~bpw)
    precision = float(np.count_nonzero(d_to_g[bpw] <= th)) / n_p
    recall = float(np.count_nonzero(d_to_p[bgw] <= th)) / n_g
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def metrics_from_confusion(c: Confusion, equal: bool) -> dict[str, float]:
    """The six pixel metrics from confusion counts; ``equal`` says whether pred == gt (for the 0/0 cases)."""
    n = c.tp + c.fp + c.fn + c.tn
    return {
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn, equal),
        "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, equal),
        "accuracy": _ratio(c.tp + c.tn, n, equal),
        "precision": _ratio(c.tp, c.tp + c.fp, equal),
        "recall": _ratio(c.tp, c.tp + c.fn, equal),
        "specificity": _ratio(c.tn, c.tn + c.fp, equal),
    }


def segmentation_metrics(
    pred: np.ndarray, gt: np.ndarray, *, with_boundary: bool = True, theta: float | None = None
) -> dict[str, float]:
    """IoU, Dice, pixel accuracy, precision, recall, specificity and Boundary F of one prediction.

    0/0 ratios are 1.0 when prediction and ground truth are identical, else 0.0.
    ``with_boundary=False`` skips the (costlier) Boundary F and omits its key.
    """
    c = Confusion.of(pred, gt)
    equal = c.fp == 0 and c.fn == 0
    out = metrics_from_confusion(c, equal)
    if with_boundary:
        out["boundary_f"] = boundary_f(pred, gt, theta)
    return out


@dataclass(frozen=True)
class SampleScore:
    """One sample's scores, its confusion counts (for cumulative IoU) and its group labels."""

    metrics: Mapping[str, float]
    confusion: Confusion
    groups: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, pred: np.ndarray, gt: np.ndarray, **groups: Any) -> SampleScore:
        return cls(segmentation_metrics(pred, gt), Confusion.of(pred, gt), groups)


def _summarise(samples: Sequence[SampleScore]) -> dict[str, float]:
    out: dict[str, float] = {"n": float(len(samples))}
    names = [m for m in METRIC_NAMES if all(m in s.metrics for s in samples)]
    for name in names:
        out[f"mean_{name}"] = float(np.mean([s.metrics[name] for s in samples]))
    inter = sum(s.confusion.intersection for s in samples)
    union = sum(s.confusion.union for s in samples)
    out["ciou"] = inter / union if union else 1.0
    return out


def aggregate_metrics(
    samples: Iterable[SampleScore], by: Sequence[str] = ("domain", "level")
) -> dict[tuple[Any, ...], dict[str, float]]:
    """Mean of every metric and cumulative IoU (sum I / sum U), overall and per group.

    Keys: ``("all",)`` for the whole set, ``(key, value)`` for each single grouping key in ``by`` and
    ``(v1, v2, ...)`` tuples prefixed by ``"x"`` for the cross product, e.g. ``("x", "Urban", "L1")``.
    An empty input gives an empty dict.
    """
    items = list(samples)
    if not items:
        return {}
    result: dict[tuple[Any, ...], dict[str, float]] = {("all",): _summarise(items)}
    for key in by:
        groups: dict[Any, list[SampleScore]] = defaultdict(list)
        for s in items:
            groups[s.groups.get(key)].append(s)
        for value in sorted(groups, key=str):
            result[(key, value)] = _summarise(groups[value])
    if len(by) > 1:
        cross: dict[tuple[Any, ...], list[SampleScore]] = defaultdict(list)
        for s in items:
            cross[tuple(s.groups.get(k) for k in by)].append(s)
        for combo in sorted(cross, key=lambda t: tuple(map(str, t))):
            result[("x", *combo)] = _summarise(cross[combo])
    return result
