"""Label Studio's smart tools answered by the pipeline's SAM3 (``ModelHandle.prompt`` of ``labeling.ml_backend``).

* **A box** (RectangleLabels): the image is cropped to the box grown by ``BOX_MARGIN`` (the paper's refined-box idea:
  context around the target), SAM3 encodes the crop once (``segmenter.set_image``) and is prompted with the positive
  clicks inside the box, or the box centre when there are none; the mask is pasted back and clipped to the box.
* **Clicks** (KeyPointLabels) without a box: SAM3 encodes the whole image and is prompted with the positive clicks.
* **Negative clicks** (Alt-click, ``is_positive: false``): the ``Segmenter`` protocol takes positive points only
  (``predict_points``), so a negative click removes the connected part of the mask it falls in (a documented
  approximation of SAM's background points). Only negative clicks, no box: an empty mask with that reason.

Masks are the model's; with the tiny random models they are meaningless (the backend says so on every region).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOX_MARGIN = 0.1  # fraction of the box's width/height added on each side of the crop


def prompt_mask(segmenter: Any, image: np.ndarray, prompt: Any) -> tuple[np.ndarray, str]:
    """(H, W) bool mask for a ``labeling.ml_backend.SmartPrompt`` on ``image`` (H, W, 3) and the route taken."""
    from scipy import ndimage

    from geoseg.masks import paste_back

    H, W = image.shape[:2]
    pts = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(prompt.labels, dtype=np.int64).reshape(-1)
    if prompt.width and prompt.height and (prompt.width, prompt.height) != (W, H):  # region sizes from Label Studio
        sx, sy = W / prompt.width, H / prompt.height
        pts = pts * [sx, sy]
        box = None if prompt.box is None else (prompt.box[0] * sx, prompt.box[1] * sy, prompt.box[2] * sx,
                                               prompt.box[3] * sy)
    else:
        box = prompt.box
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
    state = segmenter.set_image(np.ascontiguousarray(image[Y1:Y2, X1:X2]))
    mask = paste_back(segmenter.predict_points(state, prompts - [X1, Y1]), roi, W, H)
    if box is not None:
        keep = np.zeros_like(mask)
        keep[int(box[1]) : int(np.ceil(box[3])), int(box[0]) : int(np.ceil(box[2]))] = True
        mask &= keep
    if len(neg) and mask.any():
        parts, _ = ndimage.label(mask)
        for x, y in neg:
            p = parts[min(H - 1, int(y)), min(W - 1, int(x))]
            if p:
                mask &= parts != p
    return mask, route


def smart_prompt_handler(pipeline: Any) -> Any:
    """``ModelHandle.prompt`` for a ``geoseg.pipeline.GeoSegPipeline``: its SAM3 on the task image."""
    from geoseg.imagery import read_image
    from labeling.ml_backend import Suggestion

    def prompt(image_bytes: bytes, smart: Any) -> Suggestion:
        rgb = read_image(image_bytes).rgb
        mask, route = prompt_mask(pipeline.segmenter, rgb, smart)
        return Suggestion(mask, pipeline.model_version, 1.0 if mask.any() else 0.0, f"smart tool: {route}")

    return prompt
