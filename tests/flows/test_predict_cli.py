"""``geolabel predict`` on real aerial images with the tiny models (masks meaningless; files and flags checked)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from geoseg.types import TINY_MODEL_WARNING
from tests.fixtures.models import AERIAL


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_predict_tiny_profile_on_geotiff(monkeypatch, tiny_models_root, tmp_path, capsys):
    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    out = tmp_path / "pred"
    code = run(["predict", str(AERIAL / "OSBS_029.tif"), "the largest tree crown in the image", "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert TINY_MODEL_WARNING in cap.err and TINY_MODEL_WARNING in cap.out
    stem = "OSBS_029__the-largest-tree-crown-in-the-image"
    mask = np.asarray(Image.open(out / f"{stem}.mask.png"))
    assert mask.shape == (400, 400) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(out / f"{stem}.overlay.png").size == (400, 400)
    data = json.loads((out / f"{stem}.json").read_text())
    assert data["profile"] == "tiny" and data["meaningless"] is True
    assert data["image_info"]["crs"] and data["mask_shape"] == [400, 400]
    assert data["mask_area"] == int((mask > 0).sum())
    assert data["route"] != "empty" or data["reason"]


def test_predict_with_served_grounder_profile_and_ablation_flags(chat_server, tiny_models_root, tmp_path, capsys):
    profile = tmp_path / "served.json"
    profile.write_text(
        json.dumps(
            {
                "extends": "tiny",
                "grounder": {"kind": "openai", "model": "served", "options": {"base_url": chat_server.base_url}},
                "matcher": {"options": {"cache_dir": str(tiny_models_root)}},
                "segmenter": {"options": {"cache_dir": str(tiny_models_root)}},
            }
        )
    )
    chat_server.queue({"answer": '{"bbox": [100, 100, 500, 600], "prompt": "tree"}'})
    out = tmp_path / "pred"
    argv = ["predict", str(AERIAL / "SOAP_031.png"), "the conifer", "--profile", str(profile), "--out", str(out)]
    code = run(argv + ["--no-refine", "--no-route-b"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    data = json.loads((out / "SOAP_031__the-conifer.json").read_text())
    assert data["box"] == [40.0, 40.0, 200.0, 240.0] and data["refined_box"] == data["box"]
    assert data["config"]["refine"] is False and data["config"]["route_b"] is False
    assert data["route"] in ("point", "empty") and data["phrase"] == "tree"
    assert 1 <= len(data["keypoints"]) <= 5
    overlay = np.asarray(Image.open(out / "SOAP_031__the-conifer.overlay.png").convert("RGB"))
    assert (overlay[40, 40:200] == [255, 255, 0]).all(axis=1).mean() > 0.8  # the raw box in yellow (keypoints aside)
    assert f"json: {out}" in cap.out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--no-route-a", "--no-route-b"], "at least one of route_a / route_b"),
        (["--profile", "fast"], "unknown profile 'fast'"),
    ],
)
def test_predict_bad_options(tmp_path, capsys, argv, match):
    code = run(["predict", str(AERIAL / "SOAP_031.png"), "q", "--out", str(tmp_path)] + argv)
    assert code == 1 and match in capsys.readouterr().err


def test_predict_bad_image(tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert run(["predict", str(bad), "q", "--out", str(tmp_path)]) == 1
    assert "error:" in capsys.readouterr().err
    assert run(["predict", str(tmp_path / "missing.tif"), "q", "--out", str(tmp_path)]) == 1
