"""geoseg.interactive: an annotator's clicks and box prompting the segmenter, checked with recording stand-in
segmenters (their masks are discs drawn around the prompts they receive, so the geometry is visible; the real tiny
SAM3 through a real Label Studio and a real browser is in tests/labeling and tests/integration)."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.interactive import BOX_MARGIN, prompt_mask
from geoseg.protocols import ClickSegmenter


class RecordingSegmenter:
    """Positive points only: draws a disc of radius 6 around each point it is given, at the crop's resolution."""

    meaningless = True

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


class RecordingClickSegmenter(RecordingSegmenter):
    """Takes background points too (as SAM): records (points, labels); discs around the foreground points only."""

    def __init__(self):
        super().__init__()
        self.clicks = []

    def predict_clicks(self, state, points, labels):
        self.clicks.append((np.asarray(points, float), np.asarray(labels).tolist()))
        return self.predict_points(state, np.asarray(points)[np.asarray(labels) == 1])


def test_click_prompts_the_whole_image_and_negative_clicks_cut_their_part():
    seg = RecordingSegmenter()
    assert not isinstance(seg, ClickSegmenter)
    img = np.zeros((100, 200, 3), np.uint8)
    mask, route = prompt_mask(seg, img, [(40.0, 30.0), (150.0, 70.0)], [1, 1])
    assert route == "click" and seg.crops == [(100, 200)]
    assert mask[30, 40] and mask[70, 150] and mask.sum() > 200
    mask2, _ = prompt_mask(seg, img, [(40.0, 30.0), (150.0, 70.0), (152.0, 71.0)], [1, 1, 0])
    assert mask2[30, 40] and not mask2[70, 150]  # the part under the negative click is gone
    empty, why = prompt_mask(seg, img, [(5.0, 5.0)], [0])
    assert not empty.any() and why == "negative clicks only"
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        prompt_mask(seg, img, [(1.0, 1.0), (2.0, 2.0)], [1])


def test_negative_clicks_are_background_points_for_a_click_segmenter():
    seg = RecordingClickSegmenter()
    assert isinstance(seg, ClickSegmenter)
    img = np.zeros((100, 200, 3), np.uint8)
    mask, route = prompt_mask(seg, img, [(40.0, 30.0), (150.0, 70.0), (152.0, 71.0)], [1, 1, 0])
    (points, labels), = seg.clicks
    assert labels == [1, 1, 0] and np.allclose(points, [[40, 30], [150, 70], [152, 71]])  # one prompt, all clicks
    assert mask[70, 150]  # the model decides; nothing is cut after it
    prompt_mask(seg, img, [(40.0, 30.0)], [1])
    assert len(seg.clicks) == 1 and len(seg.points) == 2  # positive clicks only: plain point prompts
    # in a box: the crop's own coordinates, negative clicks off the crop dropped
    box = (100.0, 40.0, 140.0, 80.0)
    prompt_mask(seg, img, [(120.0, 60.0), (130.0, 50.0), (10.0, 10.0)], [1, 0, 0], box)
    x0, y0 = np.floor(100 - BOX_MARGIN * 40), np.floor(40 - BOX_MARGIN * 40)
    points, labels = seg.clicks[-1]
    assert labels == [1, 0] and np.allclose(points, [[120 - x0, 60 - y0], [130 - x0, 50 - y0]])


def test_box_prompts_its_crop_and_the_mask_stays_inside():
    seg = RecordingSegmenter()
    img = np.zeros((100, 200, 3), np.uint8)
    box = (100.0, 40.0, 110.0, 50.0)  # a 10x10 box: the disc (r=6) around its centre spills over it
    mask, route = prompt_mask(seg, img, [], [], box)
    m = BOX_MARGIN * 10
    assert route == "box" and seg.crops == [(int(np.ceil(50 + m) - np.floor(40 - m)),
                                            int(np.ceil(110 + m) - np.floor(100 - m)))]
    np.testing.assert_allclose(seg.points[-1], [[105 - np.floor(100 - m), 45 - np.floor(40 - m)]])  # crop coords
    assert mask[45, 105] and not mask[:40].any() and not mask[50:].any() and not mask[:, :100].any()
