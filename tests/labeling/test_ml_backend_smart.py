"""Smart tools (a click, a box) in the ML backend: the context Label Studio sends parsed into pixel prompts, and the
SAM3 prompting of flows.smart_tools checked with a recording stand-in segmenter (its masks are drawn around the
prompts it receives, so the geometry is visible; the real tiny SAM3 through a real Label Studio is in
test_ml_backend_labelstudio.py)."""

from __future__ import annotations

import numpy as np
import pytest

from flows.smart_tools import BOX_MARGIN, prompt_mask
from labeling.ml_backend import SmartPrompt, smart_prompt


def _kp(x, y, positive=True, w=200, h=100, label="target"):
    return {"type": "keypointlabels", "original_width": w, "original_height": h, "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def _rect(x, y, bw, bh, w=200, h=100):
    return {"type": "rectanglelabels", "original_width": w, "original_height": h,
            "value": {"x": x, "y": y, "width": bw, "height": bh, "rectanglelabels": ["target"]}}


def test_context_to_pixel_prompts():
    p = smart_prompt({"result": [_kp(50, 50), _kp(10, 20, positive=False), _kp(1, 1, label="background")]})
    assert p.points == ((100.0, 50.0), (20.0, 20.0), (2.0, 1.0)) and p.labels == (1, 0, 0) and p.box is None
    b = smart_prompt({"result": [_rect(10, 20, 50, 40)]})
    assert b.box == (20.0, 20.0, 120.0, 60.0) and b.points == () and (b.width, b.height) == (200, 100)
    assert smart_prompt({"query": "roads"}) is None and smart_prompt(None) is None
    with pytest.raises(ValueError, match="original size"):
        smart_prompt({"result": [{"type": "keypointlabels", "value": {"x": 1}}]})
    with pytest.raises(ValueError, match="box is empty"):
        smart_prompt({"result": [_rect(120, 20, 5, 5)]})


class RecordingSegmenter:
    """Draws a disc of radius 6 around each positive point it is given, at the crop's resolution."""

    def __init__(self):
        self.crops, self.points = [], []

    def set_image(self, crop):
        self.crops.append(crop.shape[:2])
        return crop.shape[:2]

    def predict_points(self, state, points):
        self.points.append(np.asarray(points, float))
        h, w = state
        yy, xx = np.mgrid[:h, :w]
        m = np.zeros((h, w), bool)
        for x, y in points:
            m |= (xx - x) ** 2 + (yy - y) ** 2 <= 36
        return m

    def predict_text(self, state, phrase):  # the protocol's third method; unused by smart tools
        raise AssertionError("smart tools use point prompts")


def test_click_prompts_the_whole_image_and_negative_clicks_cut_their_part():
    seg = RecordingSegmenter()
    img = np.zeros((100, 200, 3), np.uint8)
    mask, route = prompt_mask(seg, img, SmartPrompt(((40.0, 30.0), (150.0, 70.0)), (1, 1), None, 200, 100))
    assert route == "click" and seg.crops == [(100, 200)]
    assert mask[30, 40] and mask[70, 150] and mask.sum() > 200
    mask2, _ = prompt_mask(seg, img, SmartPrompt(((40.0, 30.0), (150.0, 70.0), (152.0, 71.0)), (1, 1, 0), None,
                                                 200, 100))
    assert mask2[30, 40] and not mask2[70, 150]  # the part under the negative click is gone
    empty, why = prompt_mask(seg, img, SmartPrompt(((5.0, 5.0),), (0,), None, 200, 100))
    assert not empty.any() and why == "negative clicks only"


def test_box_prompts_its_crop_and_the_mask_stays_inside():
    seg = RecordingSegmenter()
    img = np.zeros((100, 200, 3), np.uint8)
    box = (100.0, 40.0, 110.0, 50.0)  # a 10x10 box: the disc (r=6) around its centre spills over it
    mask, route = prompt_mask(seg, img, SmartPrompt((), (), box, 200, 100))
    m = BOX_MARGIN * 10
    assert route == "box" and seg.crops == [(int(np.ceil(50 + m) - np.floor(40 - m)),
                                            int(np.ceil(110 + m) - np.floor(100 - m)))]
    np.testing.assert_allclose(seg.points[-1], [[105 - np.floor(100 - m), 45 - np.floor(40 - m)]])  # crop coords
    assert mask[45, 105] and not mask[:40].any() and not mask[50:].any() and not mask[:, :100].any()
    # a Label Studio region sized for a display copy of another size is scaled to the image
    prompt_mask(seg, np.zeros((50, 100, 3), np.uint8), SmartPrompt(((100.0, 50.0),), (1,), None, 200, 100))
    np.testing.assert_allclose(seg.points[-1], [[50.0, 25.0]])
