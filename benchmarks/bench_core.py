"""Benchmark: the non-model work of one 1024x1024 GeoSeg item, against a straightforward reference.

Steps timed (one item): refine (Eq. 2) + RoI, similarity map -> Top-K NMS keypoints on a 512x512 map (Eq. 3),
paste-back of a 600x600 crop mask (twice: one per route), validity (Eq. 6) x2, fusion (Eq. 7), and the six pixel
metrics; Boundary F is reported on its own. The reference is written here the obvious way (full-map suppression,
row/column index lists for resizing, one pass per metric, full-image distance transforms), run in the same
process.

    python benchmarks/bench_core.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage

from geoseg import Box, boundary_f, fuse_masks, paste_back, refine_box, roi_from_box, topk_nms_keypoints, validity
from geoseg.metrics import Confusion, metrics_from_confusion

W = H = 1024


def make_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    phi = np.zeros((512, 512), np.float32)
    for _ in range(8):  # a few smooth bumps plus noise, like a CLIP Surgery map
        cy, cx, s = rng.uniform(0, 512), rng.uniform(0, 512), rng.uniform(10, 60)
        phi += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    phi += rng.normal(0, 0.02, phi.shape).astype(np.float32)
    crop_a = np.hypot(yy - 256, xx - 256) < 180
    crop_a = ndimage.zoom(crop_a, 600 / 512, order=0)
    crop_b = np.roll(crop_a, 25, axis=1)
    gy, gx = np.mgrid[0:H, 0:W]
    gt = np.hypot(gy - 490, gx - 520) < 205  # a disc close to the predicted one: a realistic Boundary F
    return phi, crop_a, crop_b, gt


def ours(phi, crop_a, crop_b, gt):
    b = Box(300.0, 280.0, 760.0, 740.0)
    r = refine_box(b, W, H)
    X1, Y1, X2, Y2 = roi = roi_from_box(r)
    pts = topk_nms_keypoints(phi, k=5, tau=0.3)
    ma = paste_back(crop_a, roi, W, H)
    mb = paste_back(crop_b, roi, W, H)
    va, vb = validity(ma, roi) and len(pts) > 0, validity(mb, roi)
    m, _ = fuse_masks(ma, mb, va, vb)
    c = Confusion.of(m, gt)
    return metrics_from_confusion(c, c.fp == 0 and c.fn == 0), m


def reference(phi, crop_a, crop_b, gt):
    x1, y1, x2, y2 = 300.0, 280.0, 760.0, 740.0
    w, h = x2 - x1, y2 - y1
    rx1, ry1 = max(0.0, x1 - 0.2 * w), max(0.0, y1 - 0.2 * h)
    rx2, ry2 = min(W, x2 + 0.1 * w), min(H, y2 + 0.1 * h)
    X1, Y1, X2, Y2 = int(np.floor(rx1)), int(np.floor(ry1)), int(np.ceil(rx2)), int(np.ceil(ry2))
    norm = (phi - phi.min()) / (phi.max() - phi.min())
    work = norm.copy()
    radius = 0.1 * min(norm.shape)
    yy, xx = np.mgrid[0 : norm.shape[0], 0 : norm.shape[1]]
    pts = []
    while len(pts) < 5:
        y, x = np.unravel_index(np.argmax(work), work.shape)
        if work[y, x] < 0.3:
            break
        pts.append((x, y))
        work[np.hypot(xx - x, yy - y) <= radius] = -1
    masks = []
    for crop in (crop_a, crop_b):
        rows = [(2 * i + 1) * crop.shape[0] // (2 * (Y2 - Y1)) for i in range(Y2 - Y1)]
        cols = [(2 * j + 1) * crop.shape[1] // (2 * (X2 - X1)) for j in range(X2 - X1)]
        resized = crop[rows][:, cols]
        full = np.zeros((H, W), bool)
        full[Y1:Y2, X1:X2] = resized
        masks.append(full)
    area = (X2 - X1) * (Y2 - Y1)
    va, vb = masks[0].sum() / area >= 0.01 and pts, masks[1].sum() / area >= 0.01
    m = masks[0] & masks[1] if va and vb else masks[0] if va else masks[1] if vb else np.zeros((H, W), bool)
    tp = np.sum(m & gt)
    fp = np.sum(m & ~gt)
    fn = np.sum(~m & gt)
    tn = np.sum(~m & ~gt)
    return {
        "iou": tp / (tp + fp + fn), "dice": 2 * tp / (2 * tp + fp + fn), "accuracy": (tp + tn) / m.size,
        "precision": tp / (tp + fp), "recall": tp / (tp + fn), "specificity": tn / (tn + fp),
    }, m


def reference_boundary_f(pred, gt):
    th = np.ceil(0.0075 * np.hypot(*pred.shape))
    bp = pred & ~ndimage.binary_erosion(pred, np.ones((3, 3)), border_value=0)
    bg = gt & ~ndimage.binary_erosion(gt, np.ones((3, 3)), border_value=0)
    p = np.mean(ndimage.distance_transform_edt(~bg)[bp] <= th)
    r = np.mean(ndimage.distance_transform_edt(~bp)[bg] <= th)
    return 2 * p * r / (p + r)


def timed(fn, *args, repeats):
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        times.append((time.perf_counter() - t) * 1000)
    return out, min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    inputs = make_inputs()
    (m_ours, mask_ours), o_min, o_med = timed(ours, *inputs, repeats=args.repeats)
    (m_ref, mask_ref), r_min, r_med = timed(reference, *inputs, repeats=args.repeats)
    assert np.array_equal(mask_ours, mask_ref), "implementations disagree on the fused mask"
    for k in m_ref:
        assert abs(m_ours[k] - float(m_ref[k])) < 1e-9, k
    gt = inputs[3]
    bf, b_min, b_med = timed(boundary_f, mask_ours, gt, repeats=args.repeats)
    bf_ref, rb_min, rb_med = timed(reference_boundary_f, mask_ours, gt, repeats=args.repeats)
    assert abs(bf - bf_ref) < 1e-9
    print(f"one 1024x1024 item, {args.repeats} repeats, ms (min / median)")
    print(f"{'step':<44}{'geoseg':>18}{'reference':>18}{'speed-up':>10}")
    print(f"{'refine+RoI+NMS+paste x2+validity+fusion+6 metrics':<44}{o_min:8.2f} / {o_med:6.2f}"
          f"{r_min:10.2f} / {r_med:6.2f}{r_med / o_med:9.1f}x")
    print(f"{'boundary F (theta = ceil(0.0075 * diag))':<44}{b_min:8.2f} / {b_med:6.2f}"
          f"{rb_min:10.2f} / {rb_med:6.2f}{rb_med / b_med:9.1f}x")
    print(f"target <= 5 ms per item without Boundary F: {'met' if o_med <= 5 else 'NOT met'} ({o_med:.2f} ms)")


if __name__ == "__main__":
    main()
