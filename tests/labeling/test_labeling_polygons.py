"""Masks <-> Label Studio polygons (labeling.polygons): outlines traced by rasterio, simplified by shapely within the
documented tolerance, holes a documented limitation, and the way back through rasterio's rasterize."""

from __future__ import annotations

import numpy as np
import pytest

from labeling.polygons import (
    DEFAULT_TOLERANCE_PX,
    hole_area,
    mask_to_rings,
    polygon_region_to_mask,
    polygon_result,
    prelabel_result,
)


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_polygon_round_trip_and_tolerance():
    m = _disc(120, 160, 60, 70, 40) | _disc(120, 160, 20, 140, 10)  # two parts -> two regions
    regions = polygon_result(m, score=0.5)
    assert len(regions) == 2 and all(r["type"] == "polygonlabels" and r["score"] == 0.5 for r in regions)
    assert all(r["value"]["polygonlabels"] == ["target"] and r["original_width"] == 160 for r in regions)
    back = np.zeros_like(m)
    for r in regions:
        back |= polygon_region_to_mask(r["value"]["points"], 120, 160)
    assert _iou(back, m) >= 0.95
    # the tolerance is what it says: fewer vertices when larger, never further than it from the exact outline
    exact = mask_to_rings(m, tolerance_px=0)
    coarse = mask_to_rings(m, tolerance_px=3.0)
    fine = mask_to_rings(m, tolerance_px=DEFAULT_TOLERANCE_PX)
    assert sum(map(len, coarse)) < sum(map(len, fine)) < sum(map(len, exact))
    from shapely.geometry import LinearRing

    for ring_exact, ring_fine in zip(sorted(exact, key=len), sorted(fine, key=len), strict=True):
        assert LinearRing(ring_exact).hausdorff_distance(LinearRing(ring_fine)) <= DEFAULT_TOLERANCE_PX + 1e-9


def test_holes_are_filled_as_documented_and_empty_masks_give_nothing():
    donut = _disc(80, 80, 40, 40, 30) & ~_disc(80, 80, 40, 40, 12)
    (region,) = polygon_result(donut)
    back = polygon_region_to_mask(region["value"]["points"], 80, 80)
    assert back[40, 40] and not donut[40, 40]  # the hole is filled: the documented limitation
    assert hole_area(donut) == pytest.approx(np.count_nonzero(_disc(80, 80, 40, 40, 12)), rel=0.15)
    assert polygon_result(np.zeros((10, 10), bool)) == []
    assert prelabel_result(donut, "brush")[0]["type"] == "brushlabels"
    with pytest.raises(ValueError, match="brush' or 'polygon"):
        prelabel_result(donut, "ellipse")
