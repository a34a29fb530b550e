"""The transformers grounder on the tiny random Qwen3-VL: built offline, saved, loaded back through the real
``from_pretrained`` path with HF_HUB_OFFLINE=1, generating on a real aerial image.

The tiny model's answers are random tokens, so these tests check mechanics (loading, chat template, image tokens,
generation, decoding only new tokens, parsing into a Grounding that keeps the raw text), never box quality.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from geoseg.devices import resolve_device, resolve_dtype
from geoseg.grounding import GrounderLoadError, build_grounder, resolve_tiny_grounder_dir
from geoseg.grounding.transformers_backend import TransformersGrounder, as_rgb_uint8
from geoseg.tiny import TINY_GROUNDER_SUBDIR, build_tiny_grounder_model
from geoseg.types import BackendSpec, Grounding

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"


@pytest.fixture(scope="module")
def aerial_rgb() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(AERIAL / "SOAP_031.png").convert("RGB"))


def test_offline_environment():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_tiny_model_dir_is_small_complete_and_idempotent(tiny_grounder_dir: Path):
    assert tiny_grounder_dir.name == TINY_GROUNDER_SUBDIR
    names = {p.name for p in tiny_grounder_dir.iterdir()}
    expected = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"}
    assert expected <= names
    size = sum(p.stat().st_size for p in tiny_grounder_dir.iterdir())
    assert size < 5_000_000, f"tiny model is {size} bytes"
    info = json.loads((tiny_grounder_dir / "geolabel_tiny.json").read_text())
    assert info["kind"] == "tiny-qwen3vl" and "mean nothing" in info["warning"]
    mtime = (tiny_grounder_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_grounder_model(tiny_grounder_dir.parent) == tiny_grounder_dir
    assert (tiny_grounder_dir / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt


def test_loads_back_through_auto_classes(tiny_grounder_dir: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_grounder_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_grounder_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3VLProcessor"
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == model.config.vision_start_token_id
    assert type(processor.video_processor).__name__ == "Qwen3VLVideoProcessor"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_ground_real_aerial_image(tiny_grounder: TransformersGrounder, aerial_rgb: np.ndarray):
    H, W = aerial_rgb.shape[:2]
    tiny_grounder.ground(aerial_rgb, "warm-up")
    t0 = time.perf_counter()
    g = tiny_grounder.ground(aerial_rgb, "the largest tree crown")
    elapsed = time.perf_counter() - t0
    assert isinstance(g, Grounding)
    assert isinstance(g.raw_text, str)
    # random weights under constrained decoding (no "no target" choice): a well-formed box, meaningless
    assert g.error is None and g.boxes
    for b in g.boxes:
        assert 0 <= b.x1 < b.x2 <= W and 0 <= b.y1 < b.y2 <= H
    # ~0.1 s alone on one CPU core; the bound is loose because CI machines are shared
    assert elapsed < 5.0, f"tiny grounding took {elapsed:.3f} s"
    assert tiny_grounder.meaningless


def test_generation_is_greedy_and_decodes_only_new_tokens(tiny_grounder: TransformersGrounder, aerial_rgb):
    prompt = tiny_grounder.prompt_for("the river", (aerial_rgb.shape[1], aerial_rgb.shape[0]))
    a = tiny_grounder.generate_text(aerial_rgb, prompt)
    b = tiny_grounder.generate_text(aerial_rgb, prompt)
    assert a == b  # greedy: deterministic
    assert "Question" not in a and "<|im_start|>" not in a  # no prompt echo, no special tokens


def test_answer_cut_at_max_new_tokens_is_reported(tiny_grounder_dir: Path, aerial_rgb):
    g = TransformersGrounder(str(tiny_grounder_dir), max_new_tokens=2)
    out = g.ground(aerial_rgb, "the largest tree crown")
    assert out.box is None and "cut off at max_new_tokens=2" in out.error


def test_model_loads_once_per_instance(tiny_grounder: TransformersGrounder, aerial_rgb):
    model = tiny_grounder._model
    tiny_grounder.ground(aerial_rgb, "a road")
    tiny_grounder.load()
    assert tiny_grounder._model is model


def test_build_grounder_tiny_and_transformers(tiny_grounder_dir: Path, aerial_rgb):
    g = build_grounder(BackendSpec("tiny", str(tiny_grounder_dir), {"prompt_form": "think2seg"}))
    from geoseg.protocols import Grounder

    assert isinstance(g, TransformersGrounder) and g.meaningless and g.max_new_tokens == 64 and g.constrained
    assert isinstance(g, Grounder)
    assert g.prompt_form == "think2seg"
    assert isinstance(g.ground(aerial_rgb, "all the trees"), Grounding)
    t = build_grounder(BackendSpec("transformers", str(tiny_grounder_dir), {"max_new_tokens": 8}))
    assert isinstance(t, TransformersGrounder) and not t.meaningless
    assert isinstance(t.ground(aerial_rgb, "a building"), Grounding)
    # spec.model naming the root instead of the model dir resolves to the same build
    assert resolve_tiny_grounder_dir(BackendSpec("tiny", str(tiny_grounder_dir.parent))) == tiny_grounder_dir


def test_model_input_pixel_frame(tiny_grounder_dir: Path, aerial_rgb):
    from PIL import Image

    g = TransformersGrounder(str(tiny_grounder_dir), convention="pixel", pixel_frame="model_input", max_new_tokens=8)
    g.load()
    w, h = g._model_input_size(Image.fromarray(aerial_rgb))
    assert w % 32 == 0 and h % 32 == 0 and w * h <= 128 * 128  # the tiny processor's resize cap
    assert isinstance(g.ground(aerial_rgb, "a tree"), Grounding)


def test_ground_many_keeps_going_past_a_bad_item(tiny_grounder: TransformersGrounder, aerial_rgb):
    bad = np.zeros((10, 10, 3), dtype=np.float32)
    out = tiny_grounder.ground_many([(aerial_rgb, "a tree"), (bad, "a tree"), (aerial_rgb, "")])
    assert isinstance(out[0], Grounding)
    assert isinstance(out[1], ValueError) and "uint8" in str(out[1])
    assert isinstance(out[2], ValueError) and "non-empty" in str(out[2])


def test_missing_local_weights_error_names_the_path(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    g = TransformersGrounder(str(missing))
    with pytest.raises(GrounderLoadError, match="no-such-model") as info:
        g.ground(np.zeros((32, 32, 3), np.uint8), "a tree")
    assert "GPU" in str(info.value) and "tiny profile" in str(info.value)


def test_missing_hub_weights_offline_error_names_the_hub_id():
    g = TransformersGrounder("Qwen/Qwen3-VL-32B-Instruct")
    with pytest.raises(GrounderLoadError, match="Qwen/Qwen3-VL-32B-Instruct") as info:
        g.load()
    assert "GPU" in str(info.value)


def test_empty_dir_error(tmp_path: Path):
    with pytest.raises(GrounderLoadError, match="local directory"):
        TransformersGrounder(str(tmp_path)).load()


def test_option_validation():
    with pytest.raises(ValueError, match="convention"):
        TransformersGrounder("x", convention="norm")
    with pytest.raises(ValueError, match="prompt form"):
        TransformersGrounder("x", prompt_form="json")
    with pytest.raises(ValueError, match="max_new_tokens"):
        TransformersGrounder("x", max_new_tokens=0)
    with pytest.raises(ValueError, match="pixel_frame"):
        TransformersGrounder("x", pixel_frame="crop")
    with pytest.raises(ValueError, match="unknown grounder kind"):
        build_grounder(BackendSpec("llama"))
    with pytest.raises(ValueError, match="spec.model"):
        build_grounder(BackendSpec("transformers"))
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("bogus", "cpu")


def test_image_validation_and_device_defaults():
    assert as_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="shape"):
        as_rgb_uint8(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        as_rgb_uint8(np.zeros((0, 5, 3), np.uint8))
    import torch

    assert resolve_device("auto") in ("cpu", "cuda")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['temprature'\].*known options"):
        build_grounder(BackendSpec("transformers", "x", {"temprature": 0}))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_new_tokens'\] for the openai grounder"):
        build_grounder(BackendSpec("openai", "m", {"base_url": "http://x/v1", "max_new_tokens": 3}))


def test_require_gpu_refuses_cpu_with_a_clear_error(tiny_grounder_dir: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    g = build_grounder(BackendSpec("transformers", str(tiny_grounder_dir), {"require_gpu": True}))
    with pytest.raises(GrounderLoadError, match="require_gpu.*no CUDA GPU") as info:
        g.load()
    assert "80 GB" in str(info.value)


def test_paper_profile_grounder_gives_the_gpu_and_weights_error():
    import torch

    profiles = pytest.importorskip("geoseg.profiles")
    spec = profiles.load_profile("paper").grounder
    assert spec.model == "Qwen/Qwen3-VL-32B-Instruct" and spec.options.get("convention") == "norm1000"
    g = build_grounder(spec)
    with pytest.raises(GrounderLoadError, match="Qwen/Qwen3-VL-32B-Instruct") as info:
        g.ground(np.zeros((64, 64, 3), np.uint8), "a tree")
    if not torch.cuda.is_available():
        assert "GPU" in str(info.value)


def test_qwen25vl_family_through_the_same_backend(tiny_grounder_dir: Path, aerial_rgb):
    from PIL import Image

    from geoseg.tiny import build_tiny_qwen25vl_model

    path = build_tiny_qwen25vl_model(tiny_grounder_dir.parent)
    assert path.name == "qwen2_5vl" and build_tiny_qwen25vl_model(tiny_grounder_dir.parent) == path
    g = build_grounder(
        BackendSpec(
            "transformers", str(path), {"convention": "pixel", "pixel_frame": "model_input", "max_new_tokens": 16}
        )
    )
    out = g.ground(aerial_rgb, "the largest tree crown")
    assert type(g._model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert isinstance(out, Grounding) and isinstance(out.raw_text, str)
    w, h = g._model_input_size(Image.fromarray(aerial_rgb))
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 112 * 112
    H, W = aerial_rgb.shape[:2]
    for b in out.boxes:  # random weights; any box is mapped back into the original image
        assert 0 <= b.x1 < b.x2 <= W and 0 <= b.y1 < b.y2 <= H


def test_batched_ground_many(tiny_grounder_dir: Path, aerial_rgb):
    from PIL import Image

    other = np.asarray(Image.open(AERIAL / "SOAP_061.png").convert("RGB"))
    small = np.ascontiguousarray(aerial_rgb[:120, :200])
    g = TransformersGrounder(str(tiny_grounder_dir), max_new_tokens=16, batch_size=3)
    bad = np.zeros((2, 2))
    items = [(aerial_rgb, "a tree"), (small, "a road"), (bad, "bad"), (other, "a pond"), (aerial_rgb, "a tree")]
    out = g.ground_many(items)
    assert len(out) == 5
    assert isinstance(out[2], ValueError)
    for i in (0, 1, 3, 4):
        assert isinstance(out[i], Grounding) and isinstance(out[i].raw_text, str)
    # identical rows in different batches (one padded, one not) decode the same greedy text
    assert out[0].raw_text == out[4].raw_text
    # one generate() per chunk of 3 valid items: the texts equal a one-item call's on this deterministic CPU run
    single = TransformersGrounder(str(tiny_grounder_dir), max_new_tokens=16)
    assert single.ground(aerial_rgb, "a tree").raw_text == out[0].raw_text


def test_ground_many_load_failure_fails_every_item(tmp_path: Path):
    out = TransformersGrounder(str(tmp_path / "missing")).ground_many([(np.zeros((8, 8, 3), np.uint8), "a")] * 2)
    assert len(out) == 2 and all(isinstance(o, GrounderLoadError) for o in out)


def test_device_map_without_accelerate_is_a_clear_error(tiny_grounder_dir: Path):
    from geoseg.grounding.transformers_backend import accelerate_available

    if accelerate_available():
        pytest.skip("accelerate is installed")
    with pytest.raises(GrounderLoadError, match="accelerate.*device_map"):
        TransformersGrounder(str(tiny_grounder_dir), device_map="cpu").load()
