"""SAM3 segmenter (transformers) on tiny random models loaded from their saved directories (HF_HUB_OFFLINE=1).

Masks from tiny random weights are meaningless; the tests check the mechanics: the backbone is shared and runs once
per crop, the embeddings fed to each head equal what the transformers classes compute themselves, the shared path
gives exactly the masks of the naive path (each model encoding the crop itself), and bad inputs fail clearly.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from geoseg.segment import build_segmenter
from geoseg.segment.sam3_transformers import Sam3TransformersSegmenter
from geoseg.types import BackendSpec


def _spec(tiny_sam3_dir, **options):
    opts = {"tracker_model": str(tiny_sam3_dir / "tracker"), "device": "cpu", **options}
    return BackendSpec("sam3-transformers", str(tiny_sam3_dir / "detector"), opts)


@pytest.fixture(scope="module")
def fresh_segmenter(tiny_sam3_dir):
    """A segmenter of this module's own whose weights the tests may force (and restore)."""
    return build_segmenter(_spec(tiny_sam3_dir))


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
    """The two high-resolution levels are the tracker's own; the detector features are the detector's own. (The tiny
    ``no_memory_embedding`` is zero, so the third level matches too; the level it goes to is pinned below.)"""
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


def test_no_memory_embedding_goes_to_the_lowest_kept_level(fresh_segmenter, aerial_rgb):
    """Meta's image predictor adds ``no_mem_embed`` to the 1x (72x72 at 1008 px) level after dropping the 0.5x one;
    transformers' ``Sam3TrackerModel.get_image_embeddings`` adds it to the 0.5x map it then drops (never applied)."""
    seg = fresh_segmenter
    emb = seg.tracker.no_memory_embedding
    saved = emb.detach().clone()
    try:
        with torch.no_grad():
            emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)))
        crop = aerial_rgb[:80, :80].copy()
        mine = seg.tracker_embeds(seg.set_image(crop))
        px = seg.processor.image_processor(images=crop, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            ref = seg.tracker.get_image_embeddings(px)
        assert [tuple(m.shape[-2:]) for m in mine] == [tuple(s) for s in seg.tracker.backbone_feature_sizes]
        torch.testing.assert_close(mine[0], ref[0])
        torch.testing.assert_close(mine[1], ref[1])
        torch.testing.assert_close(mine[2], ref[2] + emb.detach().view(1, -1, 1, 1))
        assert not torch.allclose(mine[2], ref[2])
    finally:
        with torch.no_grad():
            emb.copy_(saved)


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


@contextmanager
def forced(seg, *, presence: float | None = None, query: float | None = None, **attrs):
    """Force the tiny detector's heads (real weights set, restored on exit): every presence logit to ``presence``
    (its last linear layer: weight 0, bias = value; the model clamps at +-10) and/or every query's class logit high
    (query and text projections reduced to one constant direction: the dot product exceeds the model's clamp at 12).
    ``attrs`` set segmenter options (e.g. ``text_instances``) for the duration."""
    det = seg.detector
    layers = [
        det.detr_decoder.presence_head.layer3,
        det.dot_product_scoring.query_proj,
        det.dot_product_scoring.text_proj,
    ]
    saved = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in layers]
    old = {k: getattr(seg, k) for k in attrs}
    try:
        with torch.no_grad():
            if presence is not None:
                layers[0].weight.zero_()
                layers[0].bias.fill_(presence)
            if query is not None:
                for m in layers[1:]:
                    m.weight.zero_()
                    m.bias.zero_()
                    m.bias[0] = query
        for k, v in attrs.items():
            setattr(seg, k, v)
        yield seg
    finally:
        with torch.no_grad():
            for m, (w, bias) in zip(layers, saved, strict=True):
                m.weight.copy_(w)
                m.bias.copy_(bias)
        for k, v in old.items():
            setattr(seg, k, v)


def test_route_b_defaults_are_the_paper_decision(tiny_segmenter):
    assert tiny_segmenter.text_instances == "union"
    assert tiny_segmenter.text_score_threshold == pytest.approx(0.3)
    assert tiny_segmenter.presence_threshold == pytest.approx(0.5)


def test_presence_absent_gives_an_empty_text_mask(fresh_segmenter, aerial_rgb):
    crop = aerial_rgb[:64, :96]
    with forced(fresh_segmenter, presence=-10.0, query=9.0):
        state = fresh_segmenter.set_image(crop)
        mask = fresh_segmenter.predict_text(state, "tree")
    assert mask.shape == crop.shape[:2] and not mask.any()
    assert state.calls["text"]["absent"] and state.calls["text"]["kept"] == 0
    assert state.scores["presence"] < 1e-3


def test_presence_present_gives_the_union_of_instances(fresh_segmenter, aerial_rgb):
    """All queries forced above the threshold: the mask is the union of every instance, equal to the union of what
    transformers' own ``post_process_instance_segmentation`` keeps on the model's full forward; "best" keeps one."""
    seg = fresh_segmenter
    crop = aerial_rgb[20:120, 40:170].copy()
    h, w = crop.shape[:2]
    with forced(seg, presence=10.0, query=9.0):
        state = seg.set_image(crop)
        mask = seg.predict_text(state, "tree")
        px = seg.processor.image_processor(images=crop, return_tensors="pt")["pixel_values"]
        text = seg.processor(text="tree", return_tensors="pt")
        with torch.inference_mode():
            out = seg.detector(pixel_values=px, **text)
        ref = seg.processor.post_process_instance_segmentation(out, threshold=0.3, target_sizes=[(h, w)])[0]
        with forced(seg, text_instances="best"):
            best = seg.predict_text(seg.set_image(crop), "tree")
    n = out.pred_logits.shape[1]
    assert state.calls["text"] == {"absent": False, "kept": n, "queries": n} and n >= 2
    assert len(ref["masks"]) == n
    assert np.array_equal(mask, ref["masks"].bool().any(dim=0).numpy())
    assert not np.any(best & ~mask)


def test_text_score_threshold(fresh_segmenter, aerial_rgb):
    crop = aerial_rgb[:64, :64]
    with forced(fresh_segmenter, text_score_threshold=0.999, presence_threshold=None):
        state = fresh_segmenter.set_image(crop)
        assert not fresh_segmenter.predict_text(state, "tree").any()
    assert state.scores["text"] <= 0.999


def test_pipeline_falls_back_to_route_a_when_sam3_says_absent(fresh_segmenter, tiny_matcher, aerial_rgb):
    """Presence forced "absent": Route B is empty and invalid, and the fused mask is Route A's alone (Eq. 7)."""
    from geoseg.pipeline import GeoSegPipeline
    from geoseg.types import Box, GeoSegConfig, Grounding

    pipe = GeoSegPipeline(GeoSegConfig(), matcher=tiny_matcher, segmenter=fresh_segmenter)
    grounding = Grounding(boxes=(Box(60.0, 40.0, 260.0, 220.0),), phrase="tree")
    with forced(fresh_segmenter, presence=-10.0):
        res = pipe.segment(aerial_rgb, "the tree", grounding)
    assert not res.mask_text.any() and not res.valid_text
    assert res.valid_point and res.mask_point.any()  # the tiny model's point mask on this crop (meaningless)
    assert res.route == "point"
    assert np.array_equal(res.mask, res.mask_point)


class _CallRecorder:
    """Records the keyword arguments of every ``Sam3TrackerModel.forward`` call (a real forward pre-hook)."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append({k: v for k, v in kwargs.items()})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _reference_point_mask(seg, crop, points, multimask, labels=None):
    """The tracker's own full forward (it encodes the crop itself) for one prompt holding ``points``."""
    h, w = crop.shape[:2]
    px = seg.processor.image_processor(images=crop, return_tensors="pt")["pixel_values"]
    enc = seg.tracker_processor(
        input_points=[[points]], input_labels=[[labels or [1] * len(points)]], original_sizes=[[h, w]],
        return_tensors="pt",
    )
    with torch.inference_mode():
        out = seg.tracker(
            pixel_values=px,
            input_points=enc["input_points"],
            input_labels=enc["input_labels"],
            multimask_output=multimask,
        )
    best = int(torch.argmax(out.iou_scores[0, 0]))
    low = out.pred_masks[0, 0, best : best + 1]
    logit_thr = float(np.log(seg.mask_threshold / (1 - seg.mask_threshold)))
    return seg.tracker_processor.post_process_masks([low[None]], [[h, w]], mask_threshold=logit_thr)[0][0, 0].numpy()


def test_one_point_uses_multimask_several_points_one_mask(tiny_segmenter, aerial_rgb):
    seg = tiny_segmenter
    crop = aerial_rgb[50:150, 30:170].copy()
    one, several = [[40.0, 30.0]], [[40.0, 30.0], [100.0, 70.0], [10.0, 80.0]]
    state = seg.set_image(crop)
    with _CallRecorder(seg.tracker) as rec:
        m_one = seg.predict_points(state, np.array(one))
        calls_one = dict(state.calls["point"])
        m_several = seg.predict_points(state, np.array(several))
        calls_several = dict(state.calls["point"])
    assert [c["multimask_output"] for c in rec.calls] == [True, False]
    assert tuple(rec.calls[1]["input_points"].shape[:3]) == (1, 1, 3)  # one prompt holding the three points
    assert calls_one == {"multimask_output": True, "prompts": 1, "masks_per_prompt": 3, "labels": [1]}
    assert calls_several == {"multimask_output": False, "prompts": 1, "masks_per_prompt": 1, "labels": [1, 1, 1]}
    assert np.array_equal(m_one, _reference_point_mask(seg, crop, one, True))
    assert np.array_equal(m_several, _reference_point_mask(seg, crop, several, False))


def test_clicks_with_background_points_are_one_prompt(tiny_segmenter, aerial_rgb):
    """An annotator's clicks (Label Studio's smart tools): foreground and background points in one prompt, the labels
    reaching the tracker as given (SAM's background points), the same mask as the tracker's own full forward."""
    from geoseg.protocols import ClickSegmenter

    seg = tiny_segmenter
    assert isinstance(seg, ClickSegmenter)
    crop = aerial_rgb[50:150, 30:170].copy()
    pts, labels = [[40.0, 30.0], [100.0, 70.0]], [1, 0]
    state = seg.set_image(crop)
    with _CallRecorder(seg.tracker) as rec:
        mask = seg.predict_clicks(state, np.array(pts), np.array(labels))
    assert rec.calls[0]["input_labels"].tolist() == [[labels]]
    assert state.calls["point"] == {"multimask_output": False, "prompts": 1, "masks_per_prompt": 1, "labels": [1, 0]}
    assert np.array_equal(mask, _reference_point_mask(seg, crop, pts, False, labels))
    with pytest.raises(ValueError, match="foreground"):
        seg.predict_clicks(state, np.array(pts), np.array([0, 0]))
    with pytest.raises(ValueError, match="one label"):
        seg.predict_clicks(state, np.array(pts), np.array([1]))


def test_per_point_union_mode(fresh_segmenter, aerial_rgb):
    """The public GeoSeg code's mode: one single-point prompt per point (one decoder forward), masks unioned."""
    seg = fresh_segmenter
    crop = aerial_rgb[50:150, 30:170].copy()
    pts = [[40.0, 30.0], [100.0, 70.0], [10.0, 80.0]]
    with forced(seg, point_mode="per_point_union"):
        state = seg.set_image(crop)
        with _CallRecorder(seg.tracker) as rec:
            mask = seg.predict_points(state, np.array(pts))
    assert len(rec.calls) == 1 and rec.calls[0]["multimask_output"] is False
    assert tuple(rec.calls[0]["input_points"].shape[:3]) == (1, 3, 1)  # three prompts of one point each
    assert state.calls["point"] == {"multimask_output": False, "prompts": 3, "masks_per_prompt": 1,
                                    "labels": [1, 1, 1]}
    union = np.zeros(crop.shape[:2], bool)
    for p in pts:
        union |= _reference_point_mask(seg, crop, [p], False)
    assert np.array_equal(mask, union)


def test_bad_segmenter_options(tiny_sam3_dir):
    for options, match in [
        ({"point_mode": "each"}, "point_mode"),
        ({"text_instances": "all"}, "text_instances"),
        ({"presence_threshold": 1.5}, "presence_threshold"),
        ({"encode_batch_size": 0}, "encode_batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_segmenter(_spec(tiny_sam3_dir, **options))


@pytest.mark.parametrize("shape", [(1, 40, 3), (3, 50, 3), (3, 3, 3)])
def test_crops_one_or_three_pixels_tall(tiny_segmenter, shape):
    """A crop 1 or 3 px tall is channels-last like any other (the processor is told so, not left to guess)."""
    seg = tiny_segmenter
    crop = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    state = seg.set_image(crop)
    ip = seg.processor.image_processor
    px = ip(images=crop, input_data_format="channels_last", return_tensors="pt")["pixel_values"]
    guessed = ip(images=crop, return_tensors="pt")["pixel_values"]  # what the processor guesses unprompted
    assert not torch.allclose(px, guessed)
    with torch.inference_mode():
        torch.testing.assert_close(state.hidden, seg.backbone(px).last_hidden_state)
    assert seg.predict_points(state, np.array([[1.0, 0.0]])).shape == shape[:2]
    assert seg.predict_text(state, "road").shape == shape[:2]


def test_batched_encoding_and_text_prompts(fresh_segmenter, aerial_rgb):
    """``set_images`` encodes ``encode_batch_size`` crops per backbone forward and ``predict_text_many`` runs one
    detector forward for several crops; both give what the one-crop calls give."""
    seg = fresh_segmenter
    crops = [aerial_rgb[:64, :96], aerial_rgb[100:190, 50:120], aerial_rgb[200:260, 300:399]]
    phrases = ["tree", "road", "red car"]
    singles = [seg.set_image(c) for c in crops]
    single_masks = [seg.predict_text(s, p) for s, p in zip(singles, phrases, strict=True)]
    with forced(seg, encode_batch_size=2):
        before = seg.encoder_calls
        states = seg.set_images(crops)
        assert seg.encoder_calls == before + 2  # 3 crops in batches of 2
    for s1, s2 in zip(singles, states, strict=True):
        torch.testing.assert_close(s1.hidden, s2.hidden, rtol=1e-4, atol=1e-5)
    with _CallRecorder(seg.detector) as rec:
        many = seg.predict_text_many(states, phrases)
    assert len(rec.calls) == 1
    for m1, m2, c in zip(single_masks, many, crops, strict=True):
        assert m2.shape == c.shape[:2]
        assert np.mean(m1 != m2) < 0.01  # batched float kernels may flip a few boundary pixels
    with pytest.raises(ValueError, match="one phrase per state"):
        seg.predict_text_many(states, phrases[:2])


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


# ------------------------------------------------------------------------------------- pipeline side (real models)


def _pipeline(matcher, segmenter, **cfg):
    from geoseg.pipeline import GeoSegPipeline
    from geoseg.types import GeoSegConfig

    return GeoSegPipeline(GeoSegConfig(**cfg), matcher=matcher, segmenter=segmenter)


def test_nan_similarity_map_makes_route_a_invalid_with_a_reason(tiny_matcher, fresh_segmenter, aerial_rgb):
    from geoseg.clip_surgery import ClipSurgeryMatcher
    from geoseg.types import Box, Grounding

    m = ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=2)
    proj = m.model.visual.proj
    saved = proj.detach().clone()
    grounding = Grounding(boxes=(Box(60.0, 40.0, 260.0, 220.0),), phrase="tree")
    try:
        with torch.no_grad():
            proj[0, 0] = float("nan")
        res = _pipeline(m, fresh_segmenter).segment(aerial_rgb, "the tree", grounding)
        with forced(fresh_segmenter, presence=-10.0):  # Route B empty too: the reason names the NaN map
            empty = _pipeline(m, fresh_segmenter).segment(aerial_rgb, "the tree", grounding)
    finally:
        with torch.no_grad():
            proj.copy_(saved)
    assert not res.valid_point and not res.mask_point.any() and len(res.keypoints) == 0
    assert "NaN/inf" in res.note
    assert res.route in ("text", "empty")
    assert empty.route == "empty" and "NaN/inf" in empty.reason


@pytest.mark.parametrize("mode", ["clip", "grounder", "both"])
def test_grounder_positive_points_as_route_a_prompts(tiny_matcher, fresh_segmenter, aerial_rgb, mode):
    """Think2Seg-RS positive points: ignored (paper), used instead of, or beside the CLIP keypoints; a point outside
    the RoI is dropped. The tracker receives exactly those prompts."""
    from geoseg.types import Box, Grounding

    given = ((100.0, 90.0), (150.0, 120.0), (5.0, 5.0))  # the last lies outside the refined RoI
    grounding = Grounding(boxes=(Box(60.0, 40.0, 260.0, 220.0),), phrase="tree", points=(given,))
    clip_only = _pipeline(tiny_matcher, fresh_segmenter).segment(aerial_rgb, "tree", grounding)
    with _CallRecorder(fresh_segmenter.tracker) as rec:
        res = _pipeline(tiny_matcher, fresh_segmenter, route_a_points=mode).segment(aerial_rgb, "tree", grounding)
    inside = np.array(given[:2])
    expected = {
        "clip": clip_only.keypoints,
        "grounder": inside,
        "both": np.concatenate([inside, clip_only.keypoints]),
    }[mode]
    np.testing.assert_allclose(res.keypoints, expected)
    assert len(rec.calls) == 1
    X1, Y1 = res.roi[:2]
    sent = fresh_segmenter.tracker_processor(
        input_points=[[(expected - [X1, Y1]).tolist()]],
        input_labels=[[[1] * len(expected)]],
        original_sizes=[[res.roi[3] - Y1, res.roi[2] - X1]],
        return_tensors="pt",
    )["input_points"]
    torch.testing.assert_close(rec.calls[0]["input_points"], sent)


def test_bad_route_a_points_option():
    from geoseg.types import GeoSegConfig

    with pytest.raises(ValueError, match="route_a_points"):
        GeoSegConfig(route_a_points="vlm")


def test_each_box_gets_its_own_phrase(tiny_matcher, fresh_segmenter, aerial_rgb):
    """A grounder that labels each box (Think2Seg-RS) -> each box's text prompt and CLIP map use its own phrase."""
    from geoseg.types import Box, Grounding

    grounding = Grounding(
        boxes=(Box(10.0, 10.0, 120.0, 120.0), Box(200.0, 200.0, 390.0, 390.0)),
        phrase="tree",
        phrases=("tree", "red car"),
    )
    with _CallRecorder(fresh_segmenter.detector) as rec:
        _pipeline(tiny_matcher, fresh_segmenter).segment(aerial_rgb, "things", grounding)
    sent = [c["input_ids"] for c in rec.calls]
    wanted = [fresh_segmenter.processor(text=p, return_tensors="pt")["input_ids"] for p in ("tree", "red car")]
    assert len(sent) == 2
    for a, b in zip(sent, wanted, strict=True):
        assert torch.equal(a, b)
    assert Grounding(boxes=grounding.boxes, phrase="x").phrase_of(1) == "x"
    with pytest.raises(ValueError, match="phrases must be given per box"):
        Grounding(boxes=grounding.boxes, phrases=("a",))


def test_parser_keeps_one_phrase_per_box():
    from geoseg.grounding.parse import parse_grounding, rescale_grounding

    text = (
        '[{"bbox_2d": [10, 10, 50, 50], "positive_points": [[20, 20]], "label": "tree"},'
        ' {"bbox_2d": [60, 60, 90, 90], "label": "red car"}]'
    )
    g = parse_grounding(text, (100, 100), "pixel")
    assert g.phrases == ("tree", "red car") and g.phrase == "tree"
    assert g.points == (((20.0, 20.0),), ())
    assert rescale_grounding(g, (100, 100), (200, 200)).phrases == g.phrases


class _Fixed:
    """A grounder answering a fixed grounding (stage 1 is not under test here)."""

    meaningless = True

    def __init__(self, grounding):
        self.grounding = grounding

    def ground(self, image, query):
        return self.grounding


def test_run_batch_encodes_a_chunk_of_crops_in_batches(tiny_matcher, fresh_segmenter, aerial_rgb):
    """Three items (four crops) -> backbone forwards of encode_batch_size crops; the results equal item-by-item."""
    from geoseg.pipeline import GeoSegPipeline
    from geoseg.types import Box, GeoSegConfig, Grounding

    two = Grounding(boxes=(Box(10.0, 10.0, 120.0, 120.0), Box(200.0, 200.0, 390.0, 390.0)), phrase="tree")
    one = Grounding(boxes=(Box(60.0, 40.0, 260.0, 220.0),), phrase="road")
    seg = fresh_segmenter
    singles = [_pipeline(tiny_matcher, seg).segment(aerial_rgb, "q", g, states={}) for g in (two, one, one)]
    with forced(seg, encode_batch_size=3):
        pipe = GeoSegPipeline(GeoSegConfig(), grounder=_Fixed(two), matcher=tiny_matcher, segmenter=seg)
        before = seg.encoder_calls
        items = [("a", aerial_rgb, "q")]
        out = list(pipe.run_batch(items))
        assert seg.encoder_calls == before + 1  # the item's two crops in one forward
        pipe = GeoSegPipeline(GeoSegConfig(), grounder=_Fixed(one), matcher=tiny_matcher, segmenter=seg)
        before = seg.encoder_calls
        out += list(pipe.run_batch([("b", aerial_rgb, "q"), ("c", aerial_rgb.copy(), "q")]))
        assert seg.encoder_calls == before + 1  # two items, one forward
    assert [k for k, _ in out] == ["a", "b", "c"]
    for (_, res), ref in zip(out, singles, strict=True):
        assert res.route == ref.route
        assert np.mean(res.mask != ref.mask) < 0.001  # batched float kernels may flip a few boundary pixels
        assert res.timings["encode"] > 0
