"""Property tests (hypothesis) for the GeoSeg equations and bad-input handling of the typed records."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from geoseg import (
    Box,
    GeoSegConfig,
    GeoSegResult,
    Grounding,
    boundary_f,
    fuse_masks,
    paste_back,
    refine_box,
    roi_from_box,
    segmentation_metrics,
    topk_nms_keypoints,
    validity,
)
from geoseg.keypoints import normalise_map

maps = arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(2, 40)),
              elements=st.floats(-5, 5, allow_nan=False, width=32))


@settings(max_examples=200, deadline=None)
@given(phi=maps, k=st.integers(1, 8), tau=st.floats(0, 1), radius=st.floats(0.5, 12))
def test_topk_nms_properties(phi, k, tau, radius):
    pts = topk_nms_keypoints(phi, k=k, tau=tau, radius=radius)
    norm = normalise_map(phi)
    assert pts.shape[1] == 2 and len(pts) <= k
    if norm is None:
        assert len(pts) == 0
        return
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    vals = norm[ys, xs]
    assert (vals >= tau).all()  # every point clears tau
    assert (np.diff(vals) <= 0).all()  # sorted by value, descending
    if len(pts):
        assert vals[0] == norm.max()  # the first point is the argmax
    d = np.hypot(pts[:, None, 0] - pts[None, :, 0], pts[:, None, 1] - pts[None, :, 1])
    assert (d[np.triu_indices(len(pts), 1)] > radius).all()  # pairwise farther than the radius
    if len(pts) < k:  # no early stop: everything >= tau left is within the radius of a chosen point
        yy, xx = np.nonzero(norm >= tau)
        if len(yy):
            dist = np.hypot(xx[:, None] - pts[None, :, 0], yy[:, None] - pts[None, :, 1])
            assert (dist.min(axis=1) <= radius).all()


masks = arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24)))


@settings(max_examples=150, deadline=None)
@given(a=masks, data=st.data(), va=st.booleans(), vb=st.booleans())
def test_fusion_properties(a, data, va, vb):
    b = data.draw(arrays(np.bool_, a.shape))
    m, route = fuse_masks(a, b, va, vb)
    assert m.shape == a.shape and m.dtype == np.bool_
    if va:
        assert not (m & ~a).any()  # the fused mask never leaves a valid route's mask
    if vb:
        assert not (m & ~b).any()
    assert route == {(True, True): "intersection", (True, False): "point",
                     (False, True): "text", (False, False): "empty"}[(va, vb)]


@settings(max_examples=150, deadline=None)
@given(crop=masks, data=st.data())
def test_paste_back_round_trip(crop, data):
    h, w = crop.shape
    H, W = h + data.draw(st.integers(0, 20)), w + data.draw(st.integers(0, 20))
    X1, Y1 = data.draw(st.integers(0, W - w)), data.draw(st.integers(0, H - h))
    roi = (X1, Y1, X1 + w, Y1 + h)
    full = paste_back(crop, roi, W, H)
    np.testing.assert_array_equal(full[Y1:Y1 + h, X1:X1 + w], crop)  # same size: exact round trip
    assert full.sum() == crop.sum()  # nothing outside the RoI
    s = data.draw(st.integers(2, 3))  # integer upscale, then read back every s-th pixel: exact too
    if X1 + s * w <= W and Y1 + s * h <= H:
        big = paste_back(crop, (X1, Y1, X1 + s * w, Y1 + s * h), W, H)
        np.testing.assert_array_equal(big[Y1:Y1 + s * h:s, X1:X1 + s * w:s], crop)


@settings(max_examples=150, deadline=None)
@given(x1=st.floats(-300, 300), y1=st.floats(-300, 300), w=st.floats(0.5, 400), h=st.floats(0.5, 400),
       W=st.integers(1, 256), H=st.integers(1, 256), alpha=st.floats(0, 1), beta=st.floats(0, 1))
def test_refine_box_contains_clamped_box_and_stays_inside(x1, y1, w, h, W, H, alpha, beta):
    b = Box(x1, y1, x1 + w, y1 + h)
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x1 + w, W), min(y1 + h, H)
    if cx2 <= cx1 or cy2 <= cy1:
        with pytest.raises(ValueError, match="zero area"):
            refine_box(b, W, H, alpha, beta)
        return
    r = refine_box(b, W, H, alpha, beta)
    assert 0 <= r.x1 <= cx1 + 1e-9 and 0 <= r.y1 <= cy1 + 1e-9
    assert cx2 - 1e-9 <= r.x2 <= W and cy2 - 1e-9 <= r.y2 <= H
    X1, Y1, X2, Y2 = roi_from_box(r)
    assert 0 <= X1 < X2 <= W and 0 <= Y1 < Y2 <= H


@settings(max_examples=100, deadline=None)
@given(m=masks)
def test_metrics_identity_empty_full_disjoint(m):
    same = segmentation_metrics(m, m)
    assert all(v == 1.0 for v in same.values())  # identical masks score 1 everywhere, 0/0 included
    empty, full = np.zeros_like(m), np.ones_like(m)
    ef = segmentation_metrics(empty, full)
    assert ef["iou"] == 0 and ef["recall"] == 0 and ef["precision"] == 0 and ef["accuracy"] == 0
    assert ef["specificity"] == 0.0  # tn + fp = 0 and pred != gt -> 0
    if m.any() and (~m).any():
        dis = segmentation_metrics(m, ~m)  # disjoint and complementary
        assert dis["iou"] == 0 and dis["dice"] == 0 and dis["accuracy"] == 0
    assert 0 <= boundary_f(m, ~m) <= 1


def test_metrics_all_empty_is_perfect():
    z = np.zeros((5, 5), bool)
    assert segmentation_metrics(z, z) == {k: 1.0 for k in segmentation_metrics(z, z)}
    assert boundary_f(z, np.ones((5, 5), bool)) == 0.0  # one boundary empty, the other not


# --- bad inputs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("coords", [(math.nan, 0, 1, 1), (0, 0, math.inf, 1), (5, 0, 1, 1), (0, 5, 1, 1),
                                    ("a", 0, 1, 1), (None, 0, 1, 1)])
def test_box_rejects_bad_coordinates(coords):
    with pytest.raises(ValueError):
        Box(*coords)


def test_box_fully_outside_image_is_a_clear_error():
    with pytest.raises(ValueError, match="outside the image"):
        refine_box(Box(300, 300, 400, 400), 200, 200)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="differs"):
        segmentation_metrics(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="differs"):
        boundary_f(np.zeros((3, 3), bool), np.zeros((4, 3), bool))


def test_zero_area_roi():
    assert validity(np.ones((4, 4), bool), (2, 2, 2, 4)) is False
    with pytest.raises(ValueError, match="RoI"):
        paste_back(np.ones((1, 1), bool), (2, 2, 2, 4), 4, 4)


def test_bad_image_size():
    with pytest.raises(ValueError, match="image size"):
        refine_box(Box(0, 0, 1, 1), 0, 10)


def test_config_validation_and_model_version():
    cfg = GeoSegConfig()
    assert (cfg.alpha, cfg.beta, cfg.k, cfg.tau, cfg.gamma) == (0.2, 0.1, 5, 0.3, 0.01)
    assert cfg.model_version == GeoSegConfig().model_version  # stable
    assert cfg.model_version != GeoSegConfig(alpha=0.3).model_version
    assert cfg.ablation("no_route_b").route_b is False
    assert GeoSegConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"alpha": -1}, {"tau": 1.5}, {"gamma": math.nan}, {"k": 0}, {"k": 2.5},
                {"route_a": False, "route_b": False}, {"nms_radius": 0}):
        with pytest.raises(ValueError):
            GeoSegConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        GeoSegConfig.from_dict({"alpah": 0.2})
    with pytest.raises(ValueError, match="ablation"):
        cfg.ablation("no_everything")


def test_grounding_and_result_validation():
    g = Grounding(boxes=(Box(0, 0, 2, 2),), phrase="road", points=(((1, 1),),))
    assert g.box == Box(0, 0, 2, 2) and not g.no_target
    assert Grounding(raw_text="nothing", error="no box").no_target
    with pytest.raises(ValueError, match="per box"):
        Grounding(boxes=(Box(0, 0, 2, 2),), points=(((1, 1),), ((2, 2),)))
    with pytest.raises(ValueError, match="2-D bool"):
        GeoSegResult(mask=np.zeros((2, 2), np.uint8), route="empty", grounding=g, model_version="v")
    with pytest.raises(ValueError, match="route"):
        GeoSegResult(mask=np.zeros((2, 2), bool), route="both", grounding=g, model_version="v")
    r = GeoSegResult(mask=np.zeros((2, 2), bool), route="empty", grounding=g, model_version="v", reason="x")
    assert r.summary()["mask_area"] == 0


def _full_image_boundary_f(pred, gt, theta):
    """Boundary F computed the direct way, on the whole image (the windowed implementation must match it)."""
    from scipy import ndimage

    bp = pred & ~ndimage.binary_erosion(pred, np.ones((3, 3)), border_value=0)
    bg = gt & ~ndimage.binary_erosion(gt, np.ones((3, 3)), border_value=0)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    p = np.mean(ndimage.distance_transform_edt(~bg)[bp] <= theta)
    r = np.mean(ndimage.distance_transform_edt(~bp)[bg] <= theta)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@settings(max_examples=150, deadline=None)
@given(a=masks, data=st.data(), theta=st.integers(0, 4))
def test_boundary_f_window_matches_full_image(a, data, theta):
    b = data.draw(arrays(np.bool_, a.shape))
    assert boundary_f(a, b, theta) == pytest.approx(_full_image_boundary_f(a, b, theta))
