"""Eq. 3: Top-K keypoints with non-maximum suppression on the CLIP Surgery similarity map."""

from __future__ import annotations

import numpy as np

#: Default suppression radius as a fraction of the map's shorter side (a 512 x 512 map gives 51.2 px).
DEFAULT_RADIUS_FRACTION = 0.1


def normalise_map(phi: np.ndarray) -> np.ndarray | None:
    """Min-max normalise to [0, 1]; None for a constant map (no location stands out)."""
    phi = np.asarray(phi, dtype=np.float32)
    if phi.ndim != 2 or phi.size == 0:
        raise ValueError(f"similarity map must be a non-empty 2-D array, got shape {phi.shape}")
    if not np.isfinite(phi).all():
        raise ValueError("similarity map contains NaN or infinite values")
    lo, hi = float(phi.min()), float(phi.max())
    if hi - lo <= 0.0:
        return None
    scale = 1.0 / (hi - lo)
    if scale < float(np.finfo(np.float32).max):
        return (phi - lo) * np.float32(scale)
    # a range below float32's normal numbers (e.g. 6.6e-40): its inverse overflows float32, so scale in float64
    return ((phi.astype(np.float64) - lo) * scale).astype(np.float32)


def topk_nms_keypoints(
    phi: np.ndarray, k: int = 5, tau: float = 0.3, radius: float | None = None
) -> np.ndarray:
    """Greedy Top-K NMS: (k', 2) float array of (x, y) pixel positions, sorted by map value, descending.

    The map is min-max normalised to [0, 1]. Repeatedly the highest remaining value >= tau is taken and everything
    within Euclidean distance ``radius`` of it is suppressed, until k points are taken or no value >= tau remains.
    ``radius`` defaults to ``DEFAULT_RADIUS_FRACTION`` of the map's shorter side (at least 1 px).
    A constant map has no salient point and gives an empty array; a NaN/inf map raises ValueError.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    norm = normalise_map(phi)
    if norm is None:
        return np.zeros((0, 2), dtype=np.float64)
    h, w = norm.shape
    r = max(1.0, DEFAULT_RADIUS_FRACTION * min(h, w)) if radius is None else float(radius)
    if not r > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    # Values below tau can never be chosen: mask them once, then suppress disks around each pick.
    work = np.where(norm >= tau, norm, -1.0).astype(np.float32)
    ri = int(np.floor(r))
    dy, dx = np.mgrid[-ri : ri + 1, -ri : ri + 1]
    disk = (dx * dx + dy * dy) <= r * r
    out: list[tuple[float, float]] = []
    for _ in range(int(k)):
        idx = int(np.argmax(work))
        y, x = divmod(idx, w)
        if work[y, x] < 0:
            break
        out.append((float(x), float(y)))
        y0, y1 = max(0, y - ri), min(h, y + ri + 1)
        x0, x1 = max(0, x - ri), min(w, x + ri + 1)
        sub = disk[y0 - (y - ri) : y1 - (y - ri), x0 - (x - ri) : x1 - (x - ri)]
        work[y0:y1, x0:x1][sub] = -1.0
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)
