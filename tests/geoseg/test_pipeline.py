"""GeoSegPipeline: routing, validity and fusion with small deterministic test doubles; then the real tiny models on a
real aerial image under the four Table 3 ablations; then profiles.

The doubles (a fixed grounder, a matcher with one peak, a segmenter returning rectangles) make every branch of the
pipeline's logic checkable by hand. They are not stand-ins for a service: the real backends are exercised below and
in test_clip_surgery.py / test_segment.py. Tiny-model masks are meaningless; only mechanics are asserted on them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geoseg.box import clamp_box, refine_box, roi_from_box
from geoseg.pipeline import GeoSegPipeline, ablation_pipelines
from geoseg.profiles import load_profile
from geoseg.types import ABLATIONS, TINY_MODEL_WARNING, BackendSpec, Box, GeoSegConfig, Grounding

W, H = 200, 100


class FixedGrounder:
    meaningless = False

    def __init__(self, grounding: Grounding) -> None:
        self.grounding = grounding
        self.calls = 0

    def ground(self, image, query):
        self.calls += 1
        return self.grounding


class PeakMatcher:
    """A similarity map with one smooth peak at the crop centre (or a flat map: no keypoint at all)."""

    meaningless = False

    def __init__(self, flat: bool = False) -> None:
        self.flat = flat
        self.phrases: list[str] = []

    def similarity_map(self, crop, phrase):
        self.phrases.append(phrase)
        h, w = crop.shape[:2]
        if self.flat:
            return np.full((h, w), 0.5, np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        return -(((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2).astype(np.float32)


class RectSegmenter:
    """Point route: the left ``point_frac`` of the crop; text route: the top ``text_frac`` rows."""

    meaningless = False

    def __init__(self, point_frac: float = 0.6, text_frac: float = 0.5) -> None:
        self.point_frac, self.text_frac = point_frac, text_frac
        self.encodes = 0
        self.points: list[np.ndarray] = []
        self.phrases: list[str] = []

    def set_image(self, crop):
        self.encodes += 1
        return crop.shape[:2]

    def predict_points(self, state, points):
        self.points.append(np.asarray(points))
        h, w = state
        m = np.zeros((h, w), bool)
        m[:, : int(round(w * self.point_frac))] = True
        return m

    def predict_text(self, state, phrase):
        self.phrases.append(phrase)
        h, w = state
        m = np.zeros((h, w), bool)
        m[: int(round(h * self.text_frac)), :] = True
        return m


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def make(grounding, *, config=None, matcher=None, segmenter=None):
    cfg = config or GeoSegConfig(profile="unit", matcher=BackendSpec("never-built"))
    return GeoSegPipeline(
        cfg,
        grounder=FixedGrounder(grounding),
        matcher=matcher if matcher is not None else PeakMatcher(),
        segmenter=segmenter if segmenter is not None else RectSegmenter(),
    )


BOX = Box(50.0, 20.0, 130.0, 70.0)
G1 = Grounding(boxes=(BOX,), phrase="red roof", raw_text="{...}")


def test_both_routes_valid_gives_the_intersection():
    p = make(G1)
    r = p(image(), "the building with the red roof")
    refined = refine_box(BOX, W, H, 0.2, 0.1)
    roi = roi_from_box(refined)
    X1, Y1, X2, Y2 = roi
    assert r.route == "intersection" and r.valid_point and r.valid_text
    assert r.box == BOX and r.refined_box == refined and r.roi == roi
    assert np.array_equal(r.mask, r.mask_point & r.mask_text)
    assert not r.mask[:, :X1].any() and not r.mask[:Y1].any()  # nothing outside the RoI
    assert p.segmenter.encodes == 1  # one encoding shared by both routes
    assert p.segmenter.phrases == ["red roof"] and p.matcher.phrases == ["red roof"]
    # keypoints come back in full-image pixels: crop points + RoI offset, and all inside the RoI
    crop_pts = p.segmenter.points[0]
    assert np.allclose(r.keypoints, crop_pts + [X1, Y1])
    assert ((r.keypoints[:, 0] >= X1) & (r.keypoints[:, 0] < X2)).all()
    assert r.reason is None and r.note is None
    assert set(r.timings) >= {"grounding", "crop", "encode", "similarity", "keypoints", "route_a", "route_b", "total"}
    assert r.model_version == p.config.model_version


def test_point_mask_below_gamma_falls_back_to_text():
    p = make(G1, segmenter=RectSegmenter(point_frac=0.0))
    r = p(image(), "q")
    assert r.route == "text" and not r.valid_point and r.valid_text
    assert np.array_equal(r.mask, r.mask_text)


def test_flat_map_gives_no_keypoint_and_route_a_is_invalid():
    p = make(G1, matcher=PeakMatcher(flat=True))
    r = p(image(), "q")
    assert r.route == "text" and not r.valid_point and len(r.keypoints) == 0
    assert p.segmenter.points == []  # SAM was never prompted with zero points
    assert not r.mask_point.any()


def test_both_routes_invalid_is_empty_with_reason():
    p = make(G1, segmenter=RectSegmenter(point_frac=0.0, text_frac=0.0))
    r = p(image(), "q")
    assert r.route == "empty" and not r.mask.any()
    assert "gamma" in r.reason


def test_no_box_is_an_empty_mask_with_reason():
    p = make(Grounding(raw_text="I see nothing"))
    r = p(image(), "q")
    assert r.route == "empty" and r.mask.shape == (H, W) and not r.mask.any()
    assert "no target" in r.reason and p.segmenter.encodes == 0
    p2 = make(Grounding(raw_text="garbage", error="no JSON grounding found"))
    assert p2(image(), "q").reason == "no JSON grounding found"


def test_box_outside_the_image():
    p = make(Grounding(boxes=(Box(300, 10, 400, 50),), phrase="x"))
    r = p(image(), "q")
    assert r.route == "empty" and "outside" in r.reason and p.segmenter.encodes == 0


def test_no_refine_uses_the_clamped_raw_box():
    raw = Box(-10.0, 5.5, 80.2, 60.0)
    cfg = GeoSegConfig(profile="unit", refine=False)
    r = make(Grounding(boxes=(raw,), phrase="x"), config=cfg)(image(), "q")
    assert r.refined_box == clamp_box(raw, W, H)
    assert r.roi == (0, 5, 81, 60)


def test_route_a_off_never_builds_the_matcher():
    cfg = GeoSegConfig(profile="unit", route_a=False, matcher=BackendSpec("would-fail-if-built"))
    p = GeoSegPipeline(cfg, grounder=FixedGrounder(G1), segmenter=RectSegmenter())
    r = p(image(), "q")
    assert r.route == "text" and r.mask_point is None and len(r.keypoints) == 0
    assert p._matcher is None


def test_route_b_off_never_prompts_text():
    cfg = GeoSegConfig(profile="unit", route_b=False)
    p = make(G1, config=cfg)
    r = p(image(), "q")
    assert r.route == "point" and r.mask_text is None and p.segmenter.phrases == []


def test_empty_phrase_uses_the_query():
    p = make(Grounding(boxes=(BOX,), phrase=""))
    p(image(), "  the pool  ")
    assert p.segmenter.phrases == ["the pool"] and p.matcher.phrases == ["the pool"]


def test_several_boxes_union():
    b2 = Box(150.0, 60.0, 190.0, 95.0)
    p = make(Grounding(boxes=(BOX, b2), phrase="tree", points=((), ((160.0, 70.0),))))
    r = p(image(), "all trees")
    singles = [make(Grounding(boxes=(b,), phrase="tree"))(image(), "all trees").mask for b in (BOX, b2)]
    assert np.array_equal(r.mask, singles[0] | singles[1])
    assert p.segmenter.encodes == 2 and r.box == BOX
    assert "2 boxes" in r.note and "intersection, intersection" in r.note


def test_score_from_route_agreement_margins_and_box_count():
    from geoseg.masks import validity_margin
    from geoseg.metrics import mask_iou

    both = make(G1)(image(), "q")  # left 60 % (point) vs top 50 % (text) of the crop: partial agreement
    iou = mask_iou(both.mask_point, both.mask_text)
    assert 0 < iou < 1 and both.score == pytest.approx(0.5 + 0.5 * iou)
    assert both.per_box[0].iou_routes == pytest.approx(iou)
    same = make(G1, segmenter=RectSegmenter(point_frac=1.0, text_frac=1.0))(image(), "q")
    assert same.score == pytest.approx(1.0)  # both routes drew the same mask
    text_only = make(G1, segmenter=RectSegmenter(point_frac=0.0))(image(), "q")
    margin = validity_margin(text_only.mask_text, text_only.roi, 0.01)
    assert text_only.score == pytest.approx(0.25 + 0.25 * margin) and 0.25 <= text_only.score <= 0.5
    assert make(G1, segmenter=RectSegmenter(0.0, 0.0))(image(), "q").score == 0.0  # no valid route
    assert make(Grounding(raw_text="[]"))(image(), "q").score == 0.0  # no box
    two = make(Grounding(boxes=(BOX, BOX), phrase="x"))(image(), "q")  # several boxes: a sign of doubt
    assert two.score == pytest.approx(both.score / np.sqrt(2)) and len(two.per_box) == 2
    assert both.summary()["score"] == round(both.score, 4)
    assert text_only.score < both.score <= same.score


def test_bad_inputs_are_clear_errors():
    p = make(G1)
    with pytest.raises(ValueError, match="RGB"):
        p(np.zeros((10, 10), np.uint8), "q")
    with pytest.raises(ValueError, match="uint8"):
        p(np.zeros((10, 10, 3), np.float32), "q")
    with pytest.raises(ValueError, match="query"):
        p(image(), "   ")
    with pytest.raises(ValueError, match="GeoSegConfig"):
        GeoSegPipeline({"alpha": 0.2})


def test_ablations_are_the_table3_rows_and_share_models():
    p = make(G1)
    rows = ablation_pipelines(p)
    assert set(rows) == set(ABLATIONS)
    assert len({q.model_version for q in rows.values()}) == 4
    for name, q in rows.items():
        assert q.segmenter is p.segmenter
        for switch, value in ABLATIONS[name].items():
            assert getattr(q.config, switch) is value


class ManyGrounder(FixedGrounder):
    def __init__(self, grounding):
        super().__init__(grounding)
        self.batches: list[int] = []

    def ground_many(self, items):
        items = list(items)
        self.batches.append(len(items))
        return [RuntimeError("grounder timed out") if q == "boom" else self.grounding for _img, q in items]


def test_run_batch_order_errors_and_grounder_batching():
    img_a, img_b = image(), image()[::-1].copy()
    g = ManyGrounder(G1)
    p = GeoSegPipeline(GeoSegConfig(profile="unit"), grounder=g, matcher=PeakMatcher(), segmenter=RectSegmenter())
    items = [
        ("a1", img_a, "q1"),
        ("b1", img_b, "q2"),
        ("bad", img_a, ""),
        ("a2", img_a, "boom"),
        ("a3", img_a, "q3"),
        ("shape", np.zeros((4, 4), np.uint8), "q"),
    ]
    out = list(p.run_batch(iter(items), batch_size=4))
    assert [k for k, _ in out] == ["a1", "b1", "bad", "a2", "a3", "shape"]
    res = dict(out)
    assert res["a1"].route == "intersection" and res["b1"].route == "intersection"
    assert isinstance(res["bad"], ValueError) and isinstance(res["shape"], ValueError)
    assert isinstance(res["a2"], RuntimeError) and "timed out" in str(res["a2"])
    assert g.batches == [3, 1]  # chunks of 4 items, invalid items never reach the grounder
    assert p.segmenter.encodes == 3  # a1, b1, a3
    assert res["a1"].timings["grounding"] >= 0
    with pytest.raises(ValueError, match="batch_size"):
        list(p.run_batch(items, batch_size=0))


def test_run_batch_without_ground_many_catches_per_item():
    class Flaky(FixedGrounder):
        def ground(self, image, query):
            if query == "boom":
                raise ConnectionError("server went away")
            return super().ground(image, query)

    p = GeoSegPipeline(
        GeoSegConfig(profile="unit"), grounder=Flaky(G1), matcher=PeakMatcher(), segmenter=RectSegmenter()
    )
    out = dict(p.run_batch([(1, image(), "ok"), (2, image(), "boom")]))
    assert out[1].route == "intersection" and isinstance(out[2], ConnectionError)


def test_run_batch_pipelined_overlaps_grounding_with_segmentation():
    """Stage 1 of chunk 2 starts while chunk 1 is still being segmented; results equal the sequential run's."""
    import threading

    second_chunk_grounding = threading.Event()
    overlapped: list[bool] = []

    class Batches(ManyGrounder):
        def ground_many(self, items):
            if self.batches:
                second_chunk_grounding.set()
            return super().ground_many(items)

    class Waiting(RectSegmenter):
        def set_image(self, crop):
            if self.encodes == 0:  # first item of chunk 1: wait (bounded) for the grounder to move on
                overlapped.append(second_chunk_grounding.wait(timeout=10))
            return super().set_image(crop)

    items = [(i, image(), f"q{i}") for i in range(6)]
    p = GeoSegPipeline(GeoSegConfig(profile="unit"), grounder=Batches(G1), matcher=PeakMatcher(), segmenter=Waiting())
    out = list(p.run_batch(items, batch_size=2))
    assert overlapped == [True] and [k for k, _ in out] == list(range(6))
    seq = list(make(G1).run_batch(items, batch_size=2, pipelined=False))
    assert all(np.array_equal(a.mask, b.mask) and a.route == b.route for (_, a), (_, b) in zip(out, seq, strict=True))


def test_run_batch_pipelined_stops_cleanly_and_passes_iterator_errors():
    p = make(G1)
    gen = p.run_batch(((i, image(), "q") for i in range(100)), batch_size=2)
    assert next(gen)[0] == 0
    gen.close()  # the caller stops early: the grounding thread is told to stop and joined

    def broken():
        yield (0, image(), "q")
        raise OSError("the work list went away")

    with pytest.raises(OSError, match="went away"):
        list(p.run_batch(broken(), batch_size=1))


# ------------------------------------------------------------------------------------ real tiny models, real image

ANSWER = '{"bbox": [200, 300, 600, 700], "prompt": "tree crown"}'  # 0-1000 grid -> (80, 120, 240, 280) on 400 px


@pytest.fixture(scope="module")
def served_tiny_pipeline(chat_server_session, tiny_matcher, tiny_segmenter):
    """Served grounder (a real HTTP chat-completions server answering a fixed box) + tiny CLIP Surgery + tiny SAM3."""
    from geoseg.grounding import build_grounder

    grounder = build_grounder(
        BackendSpec("openai", "test-served-model", {"base_url": chat_server_session.base_url, "max_retries": 0})
    )
    cfg = GeoSegConfig(profile="tiny-served")
    return GeoSegPipeline(cfg, grounder=grounder, matcher=tiny_matcher, segmenter=tiny_segmenter)


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_real_tiny_models_on_aerial_image_under_each_ablation(chat_server, served_tiny_pipeline, aerial_rgb, ablation):
    p = served_tiny_pipeline.with_config(served_tiny_pipeline.config.ablation(ablation))
    chat_server.queue({"answer": ANSWER})
    before = p.segmenter.encoder_calls
    r = p(aerial_rgb, "the conifer with the widest crown")
    assert p.segmenter.encoder_calls == before + 1  # one SAM3 vision encoding per item, whatever the routes
    assert r.box == Box(80.0, 120.0, 240.0, 280.0) and r.grounding.phrase == "tree crown"
    assert r.mask.shape == aerial_rgb.shape[:2] and r.mask.dtype == np.bool_
    sw = ABLATIONS[ablation]
    assert r.refined_box == (refine_box(r.box, 400, 400) if sw["refine"] else r.box)
    assert (r.mask_point is None) is (not sw["route_a"])
    assert (r.mask_text is None) is (not sw["route_b"])
    X1, Y1, X2, Y2 = r.roi
    assert not r.mask[:Y1].any() and not r.mask[Y2:].any() and not r.mask[:, :X1].any() and not r.mask[:, X2:].any()
    if sw["route_a"]:
        assert 1 <= len(r.keypoints) <= p.config.k
        assert ((r.keypoints >= [X1, Y1]) & (r.keypoints < [X2, Y2])).all()
    else:
        assert len(r.keypoints) == 0 and r.route in ("text", "empty")
    if not sw["route_b"]:
        assert r.route in ("point", "empty")
    assert r.note == TINY_MODEL_WARNING and p.meaningless
    assert r.model_version == p.config.model_version
    json.dumps(r.summary())


def test_run_batch_with_real_tiny_models(chat_server, served_tiny_pipeline, aerial_rgb):
    chat_server.queue({"answer": ANSWER}, {"status": 500}, {"answer": "[]"})
    before = served_tiny_pipeline.segmenter.encoder_calls
    out = dict(served_tiny_pipeline.run_batch([(i, aerial_rgb, f"query {i}") for i in range(3)]))
    assert len(out) == 3
    results = [v for v in out.values() if not isinstance(v, Exception)]
    errors = [v for v in out.values() if isinstance(v, Exception)]
    assert len(errors) == 1  # the 500 (no retries configured) is that item's error, the others go on
    assert len(results) == 2 and sum(r.box is not None for r in results) == 1  # "[]" means no target
    assert served_tiny_pipeline.segmenter.encoder_calls == before + 1  # only the item with a box is encoded


def test_tiny_profile_end_to_end(monkeypatch, tiny_models_root, aerial_rgb):
    """All three tiny models from the cache dir, built on first use. Constrained decoding makes the tiny grounder
    name a box, so refinement, CLIP Surgery, SAM3 and fusion all run (their masks are meaningless)."""
    from geoseg.tiny import ensure_tiny_models

    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    dirs = ensure_tiny_models()
    assert set(dirs) == {"grounder", "matcher", "segmenter"} and all(d.is_dir() for d in dirs.values())
    p = GeoSegPipeline(load_profile("tiny"))
    assert p.meaningless
    r = p(aerial_rgb, "the conifer with the widest crown")
    assert r.mask.shape == (400, 400) and r.note.startswith(TINY_MODEL_WARNING)
    assert r.route != "empty" or r.reason
    other = np.ascontiguousarray(aerial_rgb[50:350, 20:380])
    out = dict(p.run_batch([(i, im, q) for i, (im, q) in enumerate(
        [(aerial_rgb, "a road"), (other, "the largest tree crown"), (other, "the field")])]))
    assert all(res.grounding.boxes and res.grounding.error is None for res in [r, *out.values()])
    assert any(res.route != "empty" for res in [r, *out.values()])  # the routes ran, at least sometimes valid


# ---------------------------------------------------------------------------------------------------- profiles


def test_named_profiles():
    paper = load_profile("paper")
    assert paper.grounder.model == "Qwen/Qwen3-VL-32B-Instruct" and paper.grounder.kind == "transformers"
    assert paper.matcher.model == "ViT-B-16-quickgelu" and paper.matcher.options["pretrained"] == "openai"
    assert paper.segmenter.model == "facebook/sam3"
    assert (paper.alpha, paper.beta, paper.k, paper.tau, paper.gamma) == (0.2, 0.1, 5, 0.3, 0.01)
    tiny = load_profile("tiny")
    assert tiny.profile == "tiny" and tiny.segmenter.kind == "tiny"
    assert paper.model_version != tiny.model_version


def test_paper_profile_without_gpu_is_a_clear_error(aerial_rgb):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the paper profile would try to load 70 GB of weights")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        GeoSegPipeline(load_profile("paper"))(aerial_rgb, "the largest tree")


def test_profile_files(tmp_path):
    toml = tmp_path / "vllm.toml"
    toml.write_text(
        'extends = "paper"\nk = 3\n[grounder]\nkind = "openai"\n'
        'options = { base_url = "http://gpu:8000/v1", concurrency = 8 }\n'
        '[segmenter]\noptions = { dtype = "bfloat16" }\n'
    )
    cfg = load_profile(str(toml))
    assert cfg.profile == "vllm" and cfg.k == 3
    assert cfg.grounder.kind == "openai" and cfg.grounder.model == ""  # a new backend starts clean
    assert cfg.grounder.options == {"base_url": "http://gpu:8000/v1", "concurrency": 8}
    assert cfg.segmenter.options == {**load_profile("paper").segmenter.options, "dtype": "bfloat16"}  # merged
    js = tmp_path / "mine.json"
    js.write_text(json.dumps({"extends": "tiny", "refine": False, "tau": 0.5}))
    cfg = load_profile(js)
    assert cfg.refine is False and cfg.tau == 0.5 and cfg.segmenter.kind == "tiny"


@pytest.mark.parametrize(
    "name, body, match",
    [
        ("x.toml", "k = [", "not valid TOML"),
        ("x.json", "{", "not valid JSON"),
        ("x.yaml", "k: 1", ".toml or .json"),
        ("x.json", '{"kk": 1}', "unknown GeoSegConfig keys"),
        ("x.json", '{"tau": 2}', "tau must lie"),
        ("x.json", '{"extends": "x.json"}', "extends itself"),
        ("x.json", "[1, 2]", "table/object"),
    ],
)
def test_bad_profile_files(tmp_path, name, body, match):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(ValueError, match=match):
        load_profile(str(path))


def test_unknown_profile_name():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        load_profile("fast")


def test_profile_backend_table_with_an_unknown_key_is_refused(tmp_path):
    from geoseg.profiles import load_profile

    p = tmp_path / "typo.toml"
    p.write_text('extends = "tiny"\n[grounder]\nkidn = "tiny"\n')
    with pytest.raises(ValueError, match=r"\[grounder\]: unknown key\(s\) 'kidn'"):
        load_profile(p)
    p.write_text('extends = "tiny"\n[grounder]\nkind = "tiny"\noptions = { max_new_tokens = 8 }\n')
    assert load_profile(p).grounder.options["max_new_tokens"] == 8
