"""The paper's composite for inspection and for the MLLM judge: ground truth green, prediction red, overlap yellow."""

from __future__ import annotations

import numpy as np

GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 0)
OVERLAP_COLOUR = (255, 255, 0)


def composite(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the masks over ``image`` (H, W, 3) uint8: GT only green, prediction only red, both yellow.

    Pixels in neither mask keep the image. ``alpha`` is the weight of the mask colour (0..1).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {img.shape} dtype {img.dtype}")
    g, p = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if g.shape != img.shape[:2] or p.shape != img.shape[:2]:
        raise ValueError(f"mask shapes {g.shape} / {p.shape} differ from image size {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    out = img.astype(np.float32)
    for sel, colour in ((g & ~p, GT_COLOUR), (p & ~g, PRED_COLOUR), (g & p, OVERLAP_COLOUR)):
        out[sel] = (1.0 - alpha) * out[sel] + alpha * np.asarray(colour, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
