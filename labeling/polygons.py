"""Masks as Label Studio polygons (``PolygonLabels``), for annotators who edit a pre-label vertex by vertex.

:func:`mask_to_rings` traces the mask's outlines with rasterio (``rasterio.features.shapes``: pixel-edge
coordinates, so a ring encloses exactly the mask's pixels) and simplifies each with shapely's Douglas-Peucker
(``simplify(tolerance_px, preserve_topology=True)``). **Tolerance**: ``DEFAULT_TOLERANCE_PX = 1.0`` pixel, i.e. no
vertex of the simplified outline is more than one pixel from the traced pixel edge; the IoU of the rasterised
polygons with the mask is then about 1 - (perimeter / area) for a blob (≥ 0.95 for a 40-pixel disc).
Parts smaller than ``min_area_px`` (default 4 px²) are dropped.

**Holes: a documented limitation.** Label Studio's polygon has one ring and no holes, so each connected part becomes
one polygon region from its outer ring, and holes inside a part are filled (a donut comes back as a disc). Use the
brush pre-label (the default) for masks with holes; :func:`hole_area` tells how many pixels the polygons add.

:func:`polygon_region_to_mask` is the way back (sync): a polygon region's points (percent of the image) rasterised
with ``rasterio.features.rasterize`` at pixel centres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

POLYGON_FROM = "polygon"
DEFAULT_TOLERANCE_PX = 1.0
DEFAULT_MIN_AREA_PX = 4.0


def _polygons(mask: np.ndarray) -> list[Any]:
    """The mask's connected parts as shapely polygons (with their holes), pixel-edge coordinates."""
    from rasterio.features import shapes
    from shapely.geometry import shape

    m = np.ascontiguousarray(np.asarray(mask, dtype=bool)).astype(np.uint8)
    return [shape(geom) for geom, value in shapes(m, mask=m.astype(bool), connectivity=8) if value == 1]


def mask_to_rings(
    mask: np.ndarray, *, tolerance_px: float = DEFAULT_TOLERANCE_PX, min_area_px: float = DEFAULT_MIN_AREA_PX
) -> list[list[tuple[float, float]]]:
    """The outer ring of each connected part of ``mask`` (x, y in pixels), simplified within ``tolerance_px``."""
    if np.asarray(mask).ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {np.asarray(mask).shape}")
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    rings = []
    for poly in _polygons(mask):
        if poly.area < min_area_px:
            continue
        outer = poly.exterior.simplify(tolerance_px, preserve_topology=True) if tolerance_px else poly.exterior
        coords = [(float(x), float(y)) for x, y in outer.coords][:-1]  # Label Studio closes the ring itself
        if len(coords) >= 3:
            rings.append(coords)
    return rings


def hole_area(mask: np.ndarray) -> int:
    """Pixels inside holes of the mask's parts: what the polygon pre-label fills in (see the module docstring)."""
    return int(round(sum(sum(_ring_area(h) for h in p.interiors) for p in _polygons(mask))))


def _ring_area(ring: Any) -> float:
    from shapely.geometry import Polygon

    return float(Polygon(ring).area)


def polygon_result(
    mask: np.ndarray,
    *,
    score: float | None = None,
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    label: str = "target",
    from_name: str = POLYGON_FROM,
    to_name: str = "image",
) -> list[dict[str, Any]]:
    """Label Studio result regions (``polygonlabels``, points in percent of the image) for ``mask``; ``[]`` when
    empty."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    out = []
    for ring in mask_to_rings(m, tolerance_px=tolerance_px):
        region: dict[str, Any] = {
            "from_name": from_name,
            "to_name": to_name,
            "type": "polygonlabels",
            "original_width": int(w),
            "original_height": int(h),
            "image_rotation": 0,
            "value": {"points": [[100.0 * x / w, 100.0 * y / h] for x, y in ring], "closed": True,
                      "polygonlabels": [label]},
        }
        if score is not None:
            region["score"] = float(score)
        out.append(region)
    return out


def polygon_region_to_mask(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """A polygon region's points (percent of width/height) -> (height, width) bool mask (pixel centres inside)."""
    from rasterio.features import rasterize
    from shapely.geometry import Polygon

    pts = [(float(p[0]) * width / 100.0, float(p[1]) * height / 100.0) for p in points]
    if len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(pts)}")
    poly = Polygon(pts)
    if not poly.is_valid:
        poly = poly.buffer(0)
    if poly.is_empty:
        return np.zeros((height, width), dtype=bool)
    return rasterize([(poly, 1)], out_shape=(height, width), fill=0, dtype="uint8").astype(bool)


def prelabel_result(mask: np.ndarray, fmt: str = "brush", *, score: float | None = None) -> list[dict[str, Any]]:
    """The pre-label regions of ``mask`` in the project's format: ``brush`` (RLE, exact) or ``polygon``."""
    if fmt == "polygon":
        return polygon_result(mask, score=score)
    if fmt == "brush":
        from labeling.push import brush_result

        return brush_result(mask, score=score)
    raise ValueError(f"pre-label format must be 'brush' or 'polygon', got {fmt!r}")


def is_polygon_region(region: Mapping[str, Any]) -> bool:
    return str(region.get("type", "")).lower() == "polygonlabels"
