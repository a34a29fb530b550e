"""Masks of GeoSeg §3.3: paste-back to full resolution, validity (Eq. 6) and fusion of the two routes (Eq. 7)."""

from __future__ import annotations

import math

import numpy as np

from geoseg.types import Route


def _check_roi(roi: tuple[int, int, int, int], W: int, H: int) -> tuple[int, int, int, int]:
    X1, Y1, X2, Y2 = (int(v) for v in roi)
    if not (0 <= X1 < X2 <= W and 0 <= Y1 < Y2 <= H):
        raise ValueError(f"RoI {roi} is empty or not inside the {W}x{H} image")
    return X1, Y1, X2, Y2


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array to (height, width), sampling pixel centres."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask
    # source index of output pixel i: floor((i + 0.5) * h / height), in exact integer arithmetic
    rows = ((2 * np.arange(height, dtype=np.int64) + 1) * h) // (2 * height)
    cols = ((2 * np.arange(width, dtype=np.int64) + 1) * w) // (2 * width)
    return mask.take(rows, axis=0).take(cols, axis=1)  # two 1-D gathers: ~3x faster than one 2-D fancy index


def paste_back(crop_mask: np.ndarray, roi: tuple[int, int, int, int], W: int, H: int) -> np.ndarray:
    """Resize the crop mask to the RoI size (nearest neighbour) and paste it at the RoI offset: (H, W) bool."""
    X1, Y1, X2, Y2 = _check_roi(roi, W, H)
    out = np.zeros((H, W), dtype=bool)
    out[Y1:Y2, X1:X2] = resize_nearest(np.asarray(crop_mask).astype(bool, copy=False), Y2 - Y1, X2 - X1)
    return out


def validity(mask: np.ndarray, roi: tuple[int, int, int, int], gamma: float = 0.01) -> bool:
    """Eq. 6: a route is valid when mask area / area(RoI) >= gamma. False for an empty RoI."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    X1, Y1, X2, Y2 = roi
    roi_area = (X2 - X1) * (Y2 - Y1)
    if X2 <= X1 or Y2 <= Y1 or roi_area <= 0:
        return False
    return bool(np.count_nonzero(mask) / roi_area >= gamma)


def validity_margin(mask: np.ndarray, roi: tuple[int, int, int, int], gamma: float = 0.01) -> float:
    """How far a route mask clears Eq. 6, in [0, 1]: with a = mask area / area(RoI), ``log(a / gamma) / log(1 /
    gamma)`` clipped to [0, 1]: 0 at (or below) the threshold, 1 for a mask filling the RoI. Used by the pre-label
    score, never by the routing (which is Eq. 6 itself). gamma = 0: any non-empty mask has margin 1."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    X1, Y1, X2, Y2 = roi
    roi_area = (X2 - X1) * (Y2 - Y1)
    if X2 <= X1 or Y2 <= Y1 or roi_area <= 0:
        return 0.0
    a = np.count_nonzero(mask) / roi_area
    if a <= 0.0 or a < gamma:
        return 0.0
    if gamma <= 0.0 or gamma >= 1.0:
        return 1.0
    return float(min(1.0, max(0.0, math.log(a / gamma) / math.log(1.0 / gamma))))


def fuse_masks(
    m_pt: np.ndarray | None, m_txt: np.ndarray | None, v_pt: bool, v_txt: bool
) -> tuple[np.ndarray, Route]:
    """Eq. 7: both valid -> intersection; one valid -> that one; none -> empty mask.

    A route that did not run passes None with its validity False. The output shape is that of the given masks.
    """
    shapes = {np.shape(m) for m in (m_pt, m_txt) if m is not None}
    if not shapes:
        raise ValueError("fuse_masks needs at least one mask to know the output shape")
    if len(shapes) > 1:
        raise ValueError(f"route masks differ in shape: {sorted(shapes)}")
    if v_pt and m_pt is None or v_txt and m_txt is None:
        raise ValueError("a route marked valid must supply its mask")
    shape = shapes.pop()
    if v_pt and v_txt:
        return np.logical_and(m_pt, m_txt), "intersection"
    if v_pt:
        return np.asarray(m_pt, dtype=bool).copy(), "point"
    if v_txt:
        return np.asarray(m_txt, dtype=bool).copy(), "text"
    return np.zeros(shape, dtype=bool), "empty"
