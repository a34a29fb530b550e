"""Box handling of GeoSeg §3.2: clamping, asymmetric refinement (Eq. 2) and the integer RoI of the crop."""

from __future__ import annotations

import math

from geoseg.types import Box


def _check_size(W: int, H: int) -> None:
    if int(W) != W or int(H) != H or W <= 0 or H <= 0:
        raise ValueError(f"image size must be positive integers, got W={W!r}, H={H!r}")


def clamp_box(b: Box, W: int, H: int) -> Box:
    """Clip x to [0, W] and y to [0, H]."""
    _check_size(W, H)
    return Box(
        min(max(b.x1, 0.0), float(W)),
        min(max(b.y1, 0.0), float(H)),
        min(max(b.x2, 0.0), float(W)),
        min(max(b.y2, 0.0), float(H)),
    )


def refine_box(b: Box, W: int, H: int, alpha: float = 0.2, beta: float = 0.1) -> Box:
    """Eq. 2: asymmetric expansion of the clamped box, clipped to the image.

    With the clamped box (x1, y1, x2, y2), w = x2 - x1 and h = y2 - y1:
    x1' = x1 - alpha*w, y1' = y1 - alpha*h, x2' = x2 + beta*w, y2' = y2 + beta*h, each clipped to the image.

    Raises ValueError when the clamped box has zero area (a box fully outside the image, or a degenerate one):
    there is nothing to crop, and the pipeline records that as the reason for an empty mask.
    """
    if alpha < 0 or beta < 0 or not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"alpha and beta must be finite and >= 0, got alpha={alpha}, beta={beta}")
    c = clamp_box(b, W, H)
    w, h = c.width, c.height
    if w <= 0 or h <= 0:
        raise ValueError(
            f"box {b.as_tuple()} has zero area inside the {W}x{H} image (outside the image or degenerate)"
        )
    return clamp_box(Box(c.x1 - alpha * w, c.y1 - alpha * h, c.x2 + beta * w, c.y2 + beta * h), W, H)


def roi_from_box(b: Box) -> tuple[int, int, int, int]:
    """Integer RoI (X1, Y1, X2, Y2) = (floor x1, floor y1, ceil x2, ceil y2); the crop is image[Y1:Y2, X1:X2]."""
    return (math.floor(b.x1), math.floor(b.y1), math.ceil(b.x2), math.ceil(b.y2))
