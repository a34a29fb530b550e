"""Hand-computed cases for each GeoSeg equation (the arithmetic is written next to each expectation)."""

import math

import numpy as np
import pytest

from geoseg import (
    Box,
    Confusion,
    SampleScore,
    aggregate_metrics,
    boundary_f,
    clamp_box,
    fuse_masks,
    paste_back,
    refine_box,
    roi_from_box,
    segmentation_metrics,
    topk_nms_keypoints,
    validity,
)

# --- Eq. 2: refine_box ------------------------------------------------------------------------------------------

def test_refine_box_paper_defaults_hand_computed():
    # b = (10, 20, 110, 70) in a 200x200 image: w = 100, h = 50, alpha = 0.2, beta = 0.1
    # x1' = 10 - 0.2*100 = -10 -> clipped to 0;  y1' = 20 - 0.2*50 = 10
    # x2' = 110 + 0.1*100 = 120;                  y2' = 70 + 0.1*50 = 75
    assert refine_box(Box(10, 20, 110, 70), 200, 200).as_tuple() == (0.0, 10.0, 120.0, 75.0)


def test_refine_box_clips_at_far_edges():
    # b = (150, 150, 190, 195), 200x200: w = 40, h = 45
    # x1' = 150 - 8 = 142; y1' = 150 - 9 = 141; x2' = 190 + 4 = 194; y2' = 195 + 4.5 = 199.5
    assert refine_box(Box(150, 150, 190, 195), 200, 200).as_tuple() == (142.0, 141.0, 194.0, 199.5)
    # b = (170, 10, 199, 20): x2' = 199 + 0.1*29 = 201.9 -> clipped to W = 200
    assert refine_box(Box(170, 10, 199, 20), 200, 200).x2 == 200.0


def test_refine_box_clamps_before_measuring():
    # b = (-50, 10, 60, 40) in 100x100 clamps to (0, 10, 60, 40) first: w = 60 (not 110), h = 30
    # x1' = 0 - 12 -> 0; y1' = 10 - 6 = 4; x2' = 60 + 6 = 66; y2' = 40 + 3 = 43
    assert refine_box(Box(-50, 10, 60, 40), 100, 100).as_tuple() == (0.0, 4.0, 66.0, 43.0)


def test_refine_box_custom_alpha_beta():
    # b = (40, 40, 60, 60), w = h = 20, alpha = 0.5, beta = 0.25: (40-10, 40-10, 60+5, 60+5)
    assert refine_box(Box(40, 40, 60, 60), 100, 100, alpha=0.5, beta=0.25).as_tuple() == (30.0, 30.0, 65.0, 65.0)
    # alpha = beta = 0 is the identity on an in-image box
    assert refine_box(Box(1.5, 2.5, 3.5, 4.5), 10, 10, 0.0, 0.0).as_tuple() == (1.5, 2.5, 3.5, 4.5)


def test_clamp_box():
    assert clamp_box(Box(-5, -1, 120, 30), 100, 50).as_tuple() == (0.0, 0.0, 100.0, 30.0)


# --- RoI ----------------------------------------------------------------------------------------------------------

def test_roi_floor_ceil():
    # floor(0.5) = 0, floor(10.2) = 10, ceil(120.0) = 120, ceil(74.9) = 75
    assert roi_from_box(Box(0.5, 10.2, 120.0, 74.9)) == (0, 10, 120, 75)
    assert all(isinstance(v, int) for v in roi_from_box(Box(0.5, 10.2, 120.0, 74.9)))


# --- Eq. 3: Top-K NMS ---------------------------------------------------------------------------------------------

def test_topk_nms_hand_computed():
    phi = np.zeros((10, 10))
    phi[2, 3] = 1.0  # global max -> first point (x=3, y=2)
    phi[2, 4] = 0.9  # distance 1 from the max -> suppressed by radius 2
    phi[7, 7] = 0.5  # second point (x=7, y=7)
    phi[8, 1] = 0.2  # normalised 0.2 < tau = 0.3 -> never taken
    pts = topk_nms_keypoints(phi, k=5, tau=0.3, radius=2)
    np.testing.assert_array_equal(pts, [[3, 2], [7, 7]])


def test_topk_nms_normalises_before_threshold():
    # values 10..12: normalised (v - 10) / 2 -> 0, 0.5, 1.0; tau = 0.3 keeps 11 and 12
    phi = np.full((5, 20), 10.0)
    phi[0, 0], phi[4, 19] = 12.0, 11.0
    np.testing.assert_array_equal(topk_nms_keypoints(phi, k=5, tau=0.3, radius=1), [[0, 0], [19, 4]])


def test_topk_nms_stops_at_k():
    phi = np.arange(100, dtype=float).reshape(10, 10)
    pts = topk_nms_keypoints(phi, k=3, tau=0.0, radius=0.5)  # radius < 1 suppresses only the point itself
    np.testing.assert_array_equal(pts, [[9, 9], [8, 9], [7, 9]])


def test_topk_nms_default_radius_is_a_tenth_of_the_shorter_side():
    phi = np.zeros((100, 200))
    phi[50, 50], phi[50, 59], phi[50, 61] = 1.0, 0.9, 0.8  # default radius = 0.1 * 100 = 10 px
    np.testing.assert_array_equal(topk_nms_keypoints(phi, k=5, tau=0.3), [[50, 50], [61, 50]])


def test_topk_nms_constant_map_has_no_point_and_nan_raises():
    assert topk_nms_keypoints(np.full((8, 8), 0.7)).shape == (0, 2)
    bad = np.zeros((8, 8))
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        topk_nms_keypoints(bad)
    with pytest.raises(ValueError, match="2-D"):
        topk_nms_keypoints(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="k must"):
        topk_nms_keypoints(np.zeros((4, 4)), k=0)


# --- paste-back ---------------------------------------------------------------------------------------------------

def test_paste_back_nearest_neighbour_hand_computed():
    crop = np.array([[1, 0], [0, 1]], dtype=bool)
    # RoI (X1, Y1, X2, Y2) = (2, 1, 6, 5): 4x4, each crop pixel becomes a 2x2 block at offset (x=2, y=1)
    out = paste_back(crop, (2, 1, 6, 5), W=8, H=6)
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:3, 2:4] = True
    expected[3:5, 4:6] = True
    np.testing.assert_array_equal(out, expected)


def test_paste_back_bad_roi():
    with pytest.raises(ValueError, match="RoI"):
        paste_back(np.ones((2, 2), bool), (3, 3, 3, 5), W=8, H=8)  # zero width
    with pytest.raises(ValueError, match="RoI"):
        paste_back(np.ones((2, 2), bool), (0, 0, 9, 5), W=8, H=8)  # outside


# --- Eq. 6: validity ----------------------------------------------------------------------------------------------

def test_validity_hand_computed():
    mask = np.zeros((20, 20), dtype=bool)
    mask[0, :3] = True  # area 3, RoI 10 x 10 = 100 -> ratio 0.03
    assert validity(mask, (0, 0, 10, 10), gamma=0.01) is True  # 0.03 >= 0.01
    assert validity(mask, (0, 0, 10, 10), gamma=0.05) is False  # 0.03 < 0.05
    assert validity(mask, (0, 0, 10, 10), gamma=0.03) is True  # equality counts as valid
    assert validity(mask, (5, 5, 5, 10)) is False  # empty RoI


# --- Eq. 7: fusion ------------------------------------------------------------------------------------------------

def test_fuse_masks_all_four_routes():
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[0, 1, 1, 0]], dtype=bool)
    m, r = fuse_masks(a, b, True, True)
    assert r == "intersection" and m.tolist() == [[False, True, False, False]]
    m, r = fuse_masks(a, b, True, False)
    assert r == "point" and m.tolist() == a.tolist()
    m, r = fuse_masks(a, b, False, True)
    assert r == "text" and m.tolist() == b.tolist()
    m, r = fuse_masks(a, b, False, False)
    assert r == "empty" and not m.any() and m.shape == (1, 4)
    m, r = fuse_masks(None, b, False, True)
    assert r == "text"


def test_fuse_masks_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        fuse_masks(np.zeros((2, 2), bool), np.zeros((2, 3), bool), True, True)
    with pytest.raises(ValueError, match="valid"):
        fuse_masks(None, np.zeros((2, 2), bool), True, False)


# --- metrics ------------------------------------------------------------------------------------------------------

def test_segmentation_metrics_hand_computed():
    pred = np.zeros((4, 4), dtype=bool)
    gt = np.zeros((4, 4), dtype=bool)
    pred[0:2, 0:2] = True  # 4 px
    gt[0:2, 1:3] = True  # 4 px, overlap column 1 -> tp = 2, fp = 2, fn = 2, tn = 16 - 6 = 10
    m = segmentation_metrics(pred, gt)
    assert m["iou"] == pytest.approx(2 / 6)  # tp / (tp + fp + fn)
    assert m["dice"] == pytest.approx(4 / 8)  # 2tp / (2tp + fp + fn)
    assert m["accuracy"] == pytest.approx(12 / 16)  # (tp + tn) / N
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["specificity"] == pytest.approx(10 / 12)  # tn / (tn + fp)
    assert set(m) == {"iou", "dice", "accuracy", "precision", "recall", "specificity", "boundary_f"}


def test_boundary_f_hand_computed():
    pred = np.zeros((10, 10), dtype=bool)
    gt = np.zeros((10, 10), dtype=bool)
    pred[2:7, 2:7] = True  # 5x5 square: its boundary ring has 16 px
    gt[2:7, 3:8] = True  # the same square shifted right by one column
    # theta = 0: shared boundary pixels are rows 2 and 6, columns 3..6 -> 8 px; P = R = 8/16, F = 0.5
    assert boundary_f(pred, gt, theta=0) == pytest.approx(0.5)
    # theta = 1: every ring pixel is at most 1 px from the other ring -> P = R = 1, F = 1
    assert boundary_f(pred, gt, theta=1) == pytest.approx(1.0)
    # default theta for 10x10: ceil(0.0075 * sqrt(200)) = ceil(0.106) = 1
    assert boundary_f(pred, gt) == pytest.approx(1.0)


def test_aggregate_mean_and_cumulative_iou():
    # sample A: I = 1, U = 2 (IoU 0.5); sample B: I = 3, U = 3 (IoU 1.0)
    a_pred, a_gt = np.array([[1, 1]], bool), np.array([[1, 0]], bool)
    b_pred = np.array([[1, 1, 1]], bool)
    a = SampleScore(segmentation_metrics(a_pred, a_gt, with_boundary=False), Confusion.of(a_pred, a_gt),
                    {"domain": "Urban", "level": "L1"})
    b = SampleScore(segmentation_metrics(b_pred, b_pred, with_boundary=False), Confusion.of(b_pred, b_pred),
                    {"domain": "Rural", "level": "L1"})
    agg = aggregate_metrics([a, b])
    assert agg[("all",)]["mean_iou"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    assert agg[("all",)]["ciou"] == pytest.approx(4 / 5)  # (1 + 3) / (2 + 3)
    assert agg[("domain", "Urban")]["ciou"] == pytest.approx(0.5)
    assert agg[("level", "L1")]["n"] == 2
    assert agg[("x", "Rural", "L1")]["mean_iou"] == pytest.approx(1.0)
    assert aggregate_metrics([]) == {}


def test_confusion_counts_are_integers():
    c = Confusion.of(np.eye(3, dtype=bool), np.ones((3, 3), bool))
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 0, 6, 0)
    assert math.isclose(c.intersection / c.union, 1 / 3)
