"""SAM3 segmenter (transformers) on tiny random models loaded from their saved directories (HF_HUB_OFFLINE=1).

Masks from tiny random weights are meaningless; the tests check the mechanics: the backbone is shared and runs once
per crop, the embeddings fed to each head equal what the transformers classes compute themselves, the shared path
gives exactly the masks of the naive path (each model encoding the crop itself), and bad inputs fail clearly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoseg.segment import build_segmenter
from geoseg.segment.sam3_transformers import Sam3TransformersSegmenter
from geoseg.types import BackendSpec


@pytest.fixture(scope="module")
def naive_segmenter(tiny_sam3_dir):
    return build_segmenter(
        BackendSpec(
            "sam3-transformers",
            str(tiny_sam3_dir / "detector"),
            {"tracker_model": str(tiny_sam3_dir / "tracker"), "share_encoding": False, "device": "cpu"},
        )
    )


def test_loads_saved_dirs_and_ties_the_backbone(tiny_segmenter, tiny_sam3_dir):
    from safetensors.torch import load_file

    seg = tiny_segmenter
    assert seg.tracker.vision_encoder.backbone is seg.detector.vision_encoder.backbone
    saved = load_file(str(tiny_sam3_dir / "detector" / "model.safetensors"))
    state = seg.detector.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved if k in state)
    assert seg.meaningless


def test_one_encoder_forward_per_crop(tiny_segmenter, aerial_rgb):
    seg = tiny_segmenter
    before = seg.encoder_calls
    state = seg.set_image(aerial_rgb[50:150, 60:200])
    assert seg.encoder_calls == before + 1
    seg.predict_points(state, np.array([[10.0, 20.0], [70.0, 40.0]]))
    seg.predict_text(state, "tree")
    seg.predict_points(state, np.array([[5.0, 5.0]]))
    seg.predict_text(state, "road")
    assert seg.encoder_calls == before + 1


def test_shared_embeddings_equal_the_classes_own(tiny_segmenter, aerial_rgb):
    seg = tiny_segmenter
    crop = aerial_rgb[:90, :130].copy()
    state = seg.set_image(crop)
    px = seg.processor.image_processor(images=crop, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        ref_trk = seg.tracker.get_image_embeddings(px)
        ref_det = seg.detector.get_vision_features(pixel_values=px)
    mine_trk = seg.tracker_embeds(state)
    assert len(mine_trk) == len(ref_trk)
    for a, b in zip(mine_trk, ref_trk, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(seg.detector_embeds(state).fpn_hidden_states, ref_det.fpn_hidden_states, strict=True):
        torch.testing.assert_close(a, b)


def test_shared_path_masks_equal_naive_path(tiny_segmenter, naive_segmenter, aerial_rgb):
    crop = aerial_rgb[100:177, 40:161]
    pts = np.array([[30.0, 20.0], [90.0, 60.0], [5.0, 70.0]])
    s1, s2 = tiny_segmenter.set_image(crop), naive_segmenter.set_image(crop)
    before = naive_segmenter.encoder_calls
    m_pt_shared, m_pt_naive = tiny_segmenter.predict_points(s1, pts), naive_segmenter.predict_points(s2, pts)
    m_tx_shared, m_tx_naive = tiny_segmenter.predict_text(s1, "trees"), naive_segmenter.predict_text(s2, "trees")
    assert naive_segmenter.encoder_calls == before + 2  # the naive path encodes once per route
    for m in (m_pt_shared, m_tx_shared):
        assert m.shape == crop.shape[:2] and m.dtype == np.bool_
    assert np.array_equal(m_pt_shared, m_pt_naive)
    assert np.array_equal(m_tx_shared, m_tx_naive)
    assert s1.scores["point"] == pytest.approx(s2.scores["point"], abs=1e-5)


def test_text_union_and_threshold(tiny_sam3_dir, aerial_rgb):
    base = {"tracker_model": str(tiny_sam3_dir / "tracker"), "device": "cpu"}
    det = str(tiny_sam3_dir / "detector")
    best = build_segmenter(BackendSpec("sam3-transformers", det, base))
    union = build_segmenter(BackendSpec("sam3-transformers", det, {**base, "text_instances": "union"}))
    strict = build_segmenter(BackendSpec("sam3-transformers", det, {**base, "text_score_threshold": 0.999}))
    crop = aerial_rgb[:64, :64]
    m_best = best.predict_text(best.set_image(crop), "tree")
    m_union = union.predict_text(union.set_image(crop), "tree")
    assert not np.any(m_best & ~m_union)  # the best instance is part of the union
    assert not strict.predict_text(strict.set_image(crop), "tree").any()


def test_mask_is_at_crop_resolution_for_odd_sizes(tiny_segmenter):
    crop = np.random.default_rng(3).integers(0, 256, (7, 301, 3), dtype=np.uint8)
    state = tiny_segmenter.set_image(crop)
    assert tiny_segmenter.predict_points(state, np.array([[150.0, 3.0]])).shape == (7, 301)
    assert tiny_segmenter.predict_text(state, "road").shape == (7, 301)


@pytest.mark.parametrize(
    "points, match",
    [(np.zeros((0, 2)), "at least one point"), (np.array([[np.nan, 1.0]]), "NaN")],
)
def test_bad_points(tiny_segmenter, aerial_rgb, points, match):
    state = tiny_segmenter.set_image(aerial_rgb[:32, :32])
    with pytest.raises(ValueError, match=match):
        tiny_segmenter.predict_points(state, points)


def test_bad_inputs(tiny_segmenter, aerial_rgb):
    with pytest.raises(ValueError, match="RGB"):
        tiny_segmenter.set_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tiny_segmenter.set_image(np.zeros((10, 10, 3), np.float64))
    with pytest.raises(ValueError, match="non-empty phrase"):
        tiny_segmenter.predict_text(tiny_segmenter.set_image(aerial_rgb[:20, :20]), " ")


def test_different_backbones_are_refused(tiny_sam3_dir):
    from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

    det = Sam3Model.from_pretrained(tiny_sam3_dir / "detector")
    trk = Sam3TrackerModel.from_pretrained(tiny_sam3_dir / "tracker")
    with torch.no_grad():
        next(trk.vision_encoder.backbone.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="different weights"):
        Sam3TransformersSegmenter(
            det,
            Sam3Processor.from_pretrained(tiny_sam3_dir / "detector"),
            trk,
            Sam3TrackerProcessor.from_pretrained(tiny_sam3_dir / "tracker"),
        )


def test_spec_errors(tmp_path, tiny_sam3_dir):
    with pytest.raises(RuntimeError, match="could not load the SAM3 detector"):
        build_segmenter(BackendSpec("sam3-transformers", str(tmp_path / "nowhere")))
    with pytest.raises(RuntimeError, match="facebook/sam3 is gated"):
        build_segmenter(BackendSpec("sam3-transformers", "facebook/sam3", {"device": "cpu"}))
    with pytest.raises(ValueError, match="unknown sam3-transformers options"):
        build_segmenter(BackendSpec("sam3-transformers", str(tiny_sam3_dir / "detector"), {"bogus": True}))
    with pytest.raises(ValueError, match="mask_threshold"):
        build_segmenter(BackendSpec("tiny", options={"cache_dir": str(tiny_sam3_dir.parent), "mask_threshold": 1.5}))
    with pytest.raises(ValueError, match="unknown segmenter kind"):
        build_segmenter(BackendSpec("sam2"))
    with pytest.raises(ValueError, match="needs spec.model"):
        build_segmenter(BackendSpec("sam3-transformers"))


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory, tiny_sam3_dir):
    """The tiny detector + tracker saved as one ``Sam3VideoModel`` repo, the layout of a combined SAM3 checkpoint."""
    import json

    from transformers import Sam3Processor, Sam3TrackerModel, Sam3VideoConfig, Sam3VideoModel

    det = json.loads((tiny_sam3_dir / "detector" / "config.json").read_text())
    trk = json.loads((tiny_sam3_dir / "tracker" / "config.json").read_text())
    trk["model_type"] = "sam3_tracker_video"
    cfg = Sam3VideoConfig(detector_config=det, tracker_config=trk)
    cfg.image_size = det["vision_config"]["backbone_config"]["image_size"]  # propagates to the nested configs
    video = Sam3VideoModel(cfg)
    tiny = build_segmenter(BackendSpec("tiny", options={"cache_dir": str(tiny_sam3_dir.parent)}))
    video.detector_model.load_state_dict(tiny.detector.state_dict())
    src = Sam3TrackerModel.from_pretrained(tiny_sam3_dir / "tracker")
    video.tracker_neck.load_state_dict(src.vision_encoder.neck.state_dict())
    own = video.tracker_model.state_dict()
    video.tracker_model.load_state_dict({k: v for k, v in src.state_dict().items() if k in own}, strict=False)
    out = tmp_path_factory.mktemp("sam3video")
    video.save_pretrained(out)
    Sam3Processor.from_pretrained(tiny_sam3_dir / "detector").save_pretrained(out)
    return out


def test_combined_video_checkpoint_loads_both_halves(video_checkpoint, tiny_segmenter, aerial_rgb):
    """One repo for both halves (as facebook/sam3): the tracker is assembled completely, and the masks equal those
    of the separately saved tiny models holding the same weights."""
    from transformers import Sam3TrackerModel

    _, info = Sam3TrackerModel.from_pretrained(video_checkpoint, output_loading_info=True)
    assert info["missing_keys"]  # what transformers' own loader leaves random on this layout
    seg = build_segmenter(BackendSpec("sam3-transformers", str(video_checkpoint), {"device": "cpu"}))
    assert seg.tracker.vision_encoder.backbone is seg.detector.vision_encoder.backbone
    crop = aerial_rgb[30:130, 200:330]
    pts = np.array([[20.0, 30.0], [100.0, 60.0]])
    s1, s2 = seg.set_image(crop), tiny_segmenter.set_image(crop)
    assert np.array_equal(seg.predict_points(s1, pts), tiny_segmenter.predict_points(s2, pts))
    assert np.array_equal(seg.predict_text(s1, "tree"), tiny_segmenter.predict_text(s2, "tree"))


def test_missing_weights_are_refused(tmp_path, tiny_sam3_dir):
    """A checkpoint that would leave weights random is refused instead of producing silent nonsense masks."""
    from transformers import Sam3TrackerModel

    m = Sam3TrackerModel.from_pretrained(tiny_sam3_dir / "tracker")
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("mask_decoder.")}
    from safetensors.torch import save_file

    (tmp_path / "trk").mkdir()
    m.config.save_pretrained(tmp_path / "trk")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "trk" / "model.safetensors"))
    with pytest.raises(RuntimeError, match="missing .* weights"):
        build_segmenter(
            BackendSpec(
                "sam3-transformers",
                str(tiny_sam3_dir / "detector"),
                {"tracker_model": str(tmp_path / "trk"), "device": "cpu"},
            )
        )


def test_official_backend_is_guarded():
    """Meta's sam3 package is not installable here (GPU-only, conflicting pins): a clear error with the recipe."""
    with pytest.raises(RuntimeError, match="own venv|no GPU"):
        build_segmenter(BackendSpec("sam3-official", "/models/sam3.pt"))


def test_tiny_sam3_sizes_are_checked(tmp_path):
    from geoseg.tiny import build_tiny_sam3

    with pytest.raises(ValueError, match="bad tiny SAM3 size"):
        build_tiny_sam3(tmp_path, image_size=100)
    with pytest.raises(ValueError, match="bad tiny SAM3 size"):
        build_tiny_sam3(tmp_path, vit_layers=0)
    assert not any(tmp_path.iterdir())  # nothing half-built left behind
