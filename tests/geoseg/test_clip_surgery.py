"""CLIP Surgery matcher on a tiny random open_clip ViT loaded from its saved directory (HF_HUB_OFFLINE=1).

The tiny model's maps mean nothing; these tests check the mechanics: the weights round-trip through open_clip's own
``local-dir:`` loader, the original path of the dual forward reproduces the model's image embedding, the v-v path
changes the patch features, feature surgery follows its formula, and the map has the crop's size and [0, 1] range.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from geoseg.clip_surgery import DEFAULT_TEMPLATES, ClipSurgeryMatcher, build_matcher
from geoseg.types import BackendSpec


def test_offline_env_is_set():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_tiny_weights_round_trip_through_local_dir(tiny_clip_dir, tiny_matcher):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_clip_dir / "open_clip_model.safetensors"))
    loaded = tiny_matcher.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert tiny_matcher.meaningless
    assert tiny_matcher.source == f"local-dir:{tiny_clip_dir}"


def test_original_path_reproduces_the_image_embedding(tiny_matcher, aerial_rgb):
    px = tiny_matcher.preprocess(aerial_rgb[:120, :90])
    patches, image, grid = tiny_matcher.encode_image(px)
    with torch.inference_mode():
        reference = tiny_matcher.model.encode_image(px)
    torch.testing.assert_close(image, reference.float(), rtol=1e-4, atol=1e-5)
    gh, gw = grid
    assert patches.shape == (1, gh * gw, reference.shape[-1])


def test_vv_path_changes_patch_features(tiny_matcher, aerial_rgb):
    """Patch features come from the v-v path, not from the plain forward's last layer."""
    v = tiny_matcher.model.visual
    px = tiny_matcher.preprocess(aerial_rgb[:64, :64])
    patches, _, _ = tiny_matcher.encode_image(px)
    with torch.inference_mode():
        x = v.conv1(px).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.view(1, 1, -1), x], dim=1) + v.positional_embedding
        x = v.transformer(v.ln_pre(x))
        plain = v.ln_post(x[:, 1:]) @ v.proj
    assert patches.shape == plain.shape
    assert not torch.allclose(patches, plain, atol=1e-4)


def test_feature_surgery_formula(tiny_matcher):
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(1, 5, tiny_matcher.model.visual.proj.shape[1], generator=g)
    f = patches[0] / patches[0].norm(dim=-1, keepdim=True)
    t = tiny_matcher.text_feature("tree")
    e = tiny_matcher.text_feature("")
    expected = (f * (t - e)).sum(-1)
    torch.testing.assert_close(tiny_matcher.feature_surgery(patches, "tree"), expected)


def test_prompt_ensemble_is_normalised_and_cached(tiny_matcher):
    a = tiny_matcher.text_feature("parking lot")
    assert torch.isclose(a.norm(), torch.tensor(1.0), atol=1e-5)
    assert tiny_matcher.text_feature("parking lot") is a
    single = ClipSurgeryMatcher(
        tiny_matcher.model, tiny_matcher.tokenizer, templates=DEFAULT_TEMPLATES[:1], surgery_blocks=2
    )
    assert not torch.allclose(single.text_feature("parking lot"), a)


@pytest.mark.parametrize("redundancy", ["empty", "class_mean"])
def test_similarity_map_shape_and_range(tiny_matcher, aerial_rgb, redundancy):
    m = ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=2, redundancy=redundancy)
    crop = aerial_rgb[10:131, 20:97]
    phi = m.similarity_map(crop, "tree crown")
    assert phi.shape == crop.shape[:2] and phi.dtype == np.float32
    assert phi.min() >= 0.0 and phi.max() <= 1.0
    assert phi.max() > 0.9  # min-max normalised before upsampling
    assert np.array_equal(phi, m.similarity_map(crop, "tree crown"))  # deterministic


def test_tiny_crop_of_one_pixel(tiny_matcher):
    phi = tiny_matcher.similarity_map(np.full((1, 1, 3), 128, np.uint8), "roof")
    assert phi.shape == (1, 1)


@pytest.mark.parametrize(
    "crop, phrase, match",
    [
        (np.zeros((10, 10), np.uint8), "x", "RGB"),
        (np.zeros((10, 10, 3), np.float32), "x", "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "x", "h, w >= 1"),
        (np.zeros((10, 10, 3), np.uint8), "  ", "non-empty phrase"),
    ],
)
def test_bad_inputs(tiny_matcher, crop, phrase, match):
    with pytest.raises(ValueError, match=match):
        tiny_matcher.similarity_map(crop, phrase)


def test_bad_options(tiny_matcher, tiny_clip_dir):
    with pytest.raises(ValueError, match="surgery_blocks"):
        ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=99)
    with pytest.raises(ValueError, match="redundancy"):
        ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=1, redundancy="nope")
    with pytest.raises(ValueError, match="templates"):
        ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=1, templates=("no slot",))
    with pytest.raises(ValueError, match="unknown open_clip matcher options"):
        build_matcher(BackendSpec("open_clip", f"local-dir:{tiny_clip_dir}", {"bogus": 1}))
    with pytest.raises(ValueError, match="unknown matcher kind"):
        build_matcher(BackendSpec("clip-as-a-service"))


def test_not_a_vit_is_a_clear_error(tiny_matcher):
    with pytest.raises(ValueError, match="standard open_clip ViT"):
        ClipSurgeryMatcher(torch.nn.Linear(2, 2), tiny_matcher.tokenizer)


def test_missing_weights_offline_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="could not load open_clip weights"):
        build_matcher(BackendSpec("open_clip", "ViT-B-16", {"pretrained": "openai", "device": "cpu"}))
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {}}')
    with pytest.raises(RuntimeError, match="could not load open_clip weights"):
        build_matcher(BackendSpec("open_clip", f"local-dir:{tmp_path}"))


def test_checkpoint_file_as_pretrained(tiny_clip_dir, tiny_matcher, aerial_rgb, tmp_path):
    """The paper path: a named architecture plus a weights file, here the tiny config registered by name."""
    import json

    import open_clip

    cfg = json.loads((tiny_clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "geolabel-test-tiny-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "geolabel-test-tiny-vit.json")
    m = build_matcher(
        BackendSpec(
            "open_clip",
            "geolabel-test-tiny-vit",
            {"pretrained": str(tiny_clip_dir / "open_clip_model.safetensors"), "surgery_blocks": 2},
        )
    )
    crop = aerial_rgb[:50, :60]
    assert np.array_equal(m.similarity_map(crop, "tree"), tiny_matcher.similarity_map(crop, "tree"))


def test_input_size_interpolates_the_positional_embedding(tiny_matcher, aerial_rgb):
    """At twice the trained side the patch grid doubles; the class position is kept and the patch positions are the
    trained grid bilinearly resized (the model's own parameter is not modified)."""
    from torch.nn import functional as F  # noqa: N812

    native = tiny_matcher.native_size
    big = ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=2, input_size=2 * native[0])
    v = tiny_matcher.model.visual
    before = v.positional_embedding.detach().clone()
    crop = aerial_rgb[30:150, 40:130]
    patches, _image, grid = big.encode_image(big.preprocess(crop))
    g0 = native[0] // big.patch_size[0]
    assert grid == (2 * g0, 2 * g0) and patches.shape[1] == 4 * g0 * g0
    pos = big.positional_embedding(grid)
    torch.testing.assert_close(pos[0], before[0])
    trained = before[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(trained, size=grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1))
    assert torch.equal(v.positional_embedding, before)
    assert big.positional_embedding(grid) is pos  # cached per grid
    assert big.positional_embedding((g0, g0)) is v.positional_embedding  # the trained grid: the parameter itself
    phi = big.similarity_map(crop, "tree")
    assert phi.shape == crop.shape[:2] and phi.min() >= 0.0 and phi.max() <= 1.0


def test_paper_profile_runs_clip_surgery_as_the_references():
    from geoseg.clip_surgery import IMAGENET_TEMPLATES, PAPER_INPUT_SIZE, TEMPLATE_SETS
    from geoseg.profiles import load_profile

    opts = load_profile("paper").matcher.options
    assert opts["input_size"] == PAPER_INPUT_SIZE == 512 and opts["templates"] == "imagenet"
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 85
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert TEMPLATE_SETS["remote_sensing"] == DEFAULT_TEMPLATES


def test_named_template_sets(tiny_matcher):
    from geoseg.clip_surgery import IMAGENET_TEMPLATES

    m = ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=2, templates="imagenet")
    assert m.templates == IMAGENET_TEMPLATES
    assert not torch.allclose(m.text_feature("roof"), tiny_matcher.text_feature("roof"))
    with pytest.raises(ValueError, match="templates must be a list or one of"):
        ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=2, templates="coco")


@pytest.mark.parametrize("size, match", [(30, "multiple of the patch size"), ((64,), "input_size"), (0, "input_size")])
def test_bad_input_size(tiny_matcher, size, match):
    with pytest.raises(ValueError, match=match):
        ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=2, input_size=size)


def test_non_finite_scores_give_a_nan_map_not_an_error(tiny_matcher, aerial_rgb):
    """A model producing NaN (e.g. an fp16 overflow) yields an all-NaN map; the pipeline turns it into an invalid
    Route A with a reason (tests/geoseg/test_pipeline.py)."""
    m = ClipSurgeryMatcher(tiny_matcher.model, tiny_matcher.tokenizer, surgery_blocks=2)
    proj = m.model.visual.proj
    saved = proj.detach().clone()
    try:
        with torch.no_grad():
            proj[0, 0] = float("nan")
        phi = m.similarity_map(aerial_rgb[:40, :50], "tree")
    finally:
        with torch.no_grad():
            proj.copy_(saved)
    assert phi.shape == (40, 50) and np.isnan(phi).all()
