"""Smart tools (a click, a box) in the ML backend: the context Label Studio sends parsed into pixel prompts (the
segmenter's side is tests/geoseg/test_interactive.py; the real tiny SAM3 through a real Label Studio is in
test_ml_backend_labelstudio.py, through a real browser in tests/integration/test_browser_labelstudio.py)."""

from __future__ import annotations

import numpy as np
import pytest

from labeling.ml_backend import smart_prompt


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


def test_regions_measured_on_a_display_copy_are_scaled_to_the_image():
    p = smart_prompt({"result": [_kp(50, 50), _kp(10, 20, positive=False), _rect(10, 20, 50, 40)]})
    points, labels, box = p.in_pixels_of(100, 50)  # the stored image is half the size Label Studio measured on
    np.testing.assert_allclose(points, [[50.0, 25.0], [10.0, 10.0]])
    assert labels.tolist() == [1, 0] and box == (10.0, 10.0, 60.0, 30.0)
    same, _, _ = p.in_pixels_of(200, 100)
    np.testing.assert_allclose(same, [[100.0, 50.0], [20.0, 20.0]])
