"""An annotator's clicks and box answered by the segmenter (SAM3): Label Studio's smart tools, in image pixels.

* **A box**: the image is cropped to the box grown by ``BOX_MARGIN`` on each side (the refined-box idea of the paper:
  context around the target), the segmenter encodes the crop once (``set_image``) and is prompted with the positive
  clicks inside the box, or the box centre when there are none; the mask is pasted back and clipped to the box.
* **Clicks** without a box: the segmenter encodes the whole image and is prompted with the positive clicks.
* **Negative clicks** are SAM's background points. A segmenter that takes them (``ClickSegmenter``: both SAM3
  backends) gets every click on the crop in one prompt, labels 1/0. A segmenter with positive points only gets the
  positive clicks, and each negative click then removes the connected part of the mask it falls in. Only negative
  clicks and no box: an empty mask, with that reason as the route.

Masks are the model's; with the tiny random models they are meaningless.
"""

from __future__ import annotations

import numpy as np

from geoseg.masks import paste_back
from geoseg.protocols import ClickSegmenter, Segmenter

BOX_MARGIN = 0.1  # fraction of the box's width/height added on each side of the crop

Box = tuple[float, float, float, float]


def prompt_mask(
    segmenter: Segmenter,
    image: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    box: Box | None = None,
) -> tuple[np.ndarray, str]:
    """(H, W) bool mask for clicks ``points`` (k, 2) (x, y) with ``labels`` (1 foreground, 0 background) and/or a
    ``box`` (x0, y0, x1, y1), all in ``image`` pixels; and the route taken (``box``, ``click`` or why it is empty)."""
    from scipy import ndimage

    H, W = image.shape[:2]
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(lab) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(lab)} labels")
    pos, neg = pts[lab == 1], pts[lab == 0]
    if box is not None:
        x0, y0, x1, y1 = box
        mx, my = BOX_MARGIN * (x1 - x0), BOX_MARGIN * (y1 - y0)
        roi = (max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my))),
               min(W, int(np.ceil(x1 + mx))), min(H, int(np.ceil(y1 + my))))
        inside = pos[(pos[:, 0] >= x0) & (pos[:, 0] <= x1) & (pos[:, 1] >= y0) & (pos[:, 1] <= y1)]
        prompts = inside if len(inside) else np.array([[(x0 + x1) / 2, (y0 + y1) / 2]])
        route = "box"
    else:
        if not len(pos):
            return np.zeros((H, W), dtype=bool), "negative clicks only"
        roi, prompts, route = (0, 0, W, H), pos, "click"
    X1, Y1, X2, Y2 = roi
    neg = neg[(neg[:, 0] >= X1) & (neg[:, 0] < X2) & (neg[:, 1] >= Y1) & (neg[:, 1] < Y2)]  # those on the crop
    state = segmenter.set_image(np.ascontiguousarray(image[Y1:Y2, X1:X2]))
    background_points = isinstance(segmenter, ClickSegmenter) and len(neg) > 0
    if background_points:
        clicks = np.concatenate([prompts, neg]) - [X1, Y1]
        click_labels = np.concatenate([np.ones(len(prompts), np.int64), np.zeros(len(neg), np.int64)])
        crop_mask = segmenter.predict_clicks(state, clicks, click_labels)
    else:
        crop_mask = segmenter.predict_points(state, prompts - [X1, Y1])
    mask = paste_back(crop_mask, roi, W, H)
    if box is not None:
        keep = np.zeros_like(mask)
        keep[int(box[1]) : int(np.ceil(box[3])), int(box[0]) : int(np.ceil(box[2]))] = True
        mask &= keep
    if len(neg) and not background_points and mask.any():
        parts, _ = ndimage.label(mask)
        for x, y in neg:
            p = parts[min(H - 1, int(y)), min(W - 1, int(x))]
            if p:
                mask &= parts != p
    return mask, route
