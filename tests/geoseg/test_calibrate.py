"""geolabel calibrate's fitting (geoseg.calibrate) on GENERATED benchmarks: accepted masks are random rectangles and
discs; the grounder's boxes are the masks' tight boxes shifted by a known share of their size (plus jitter), so the
box fit must recover that shift. Stage 2-3 re-runs use the tiny random models: those IoUs are meaningless (mechanics
only: the harness cache, the bounded search, the report)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from geoseg.calibrate import (
    CalibrationError,
    CalibrationSample,
    calibrate,
    fit_box_margins,
    fit_gamma,
    profile_text,
    refuse_iou,
    side_shifts,
    tight_box,
)
from geoseg.evaluation.bench import BenchSample
from geoseg.types import Box, GeoSegConfig, Grounding

H, W = 96, 128
SHIFT = 0.12  # the grounder's boxes sit this share of their width/height right of and below the target


def generated(n: int, root: Path | None = None, seed: int = 0) -> list[CalibrationSample]:
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:H, :W]
    for i in range(n):
        w, h = int(rng.integers(20, 50)), int(rng.integers(16, 40))
        x0, y0 = int(rng.integers(2, W - w - 12)), int(rng.integers(2, H - h - 10))
        if i % 2:
            mask = np.zeros((H, W), bool)
            mask[y0 : y0 + h, x0 : x0 + w] = True
        else:
            mask = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 < 1
        t = tight_box(mask)
        jx, jy = rng.normal(0, 0.01, 2)
        box = Box(t.x1 + (SHIFT + jx) * t.width, t.y1 + (SHIFT + jy) * t.height,
                  t.x2 + (SHIFT + jx) * t.width, t.y2 + (SHIFT + jy) * t.height)  # fmt: skip
        ip, mp = Path(f"/nonexistent/{i}.png"), Path(f"/nonexistent/{i}_m.png")
        if root is not None:
            ip, mp = root / f"img_{i}.png", root / f"mask_{i}.png"
            PILImage.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(ip)
            PILImage.fromarray(mask.astype(np.uint8) * 255).save(mp)
        sample = BenchSample(str(i), ip, mp, f"the object {i}", ("Urban", "Rural")[i % 2], ("L1", "L2")[i % 3 == 0],
                             H, W)  # fmt: skip
        out.append(CalibrationSample(sample, Grounding(boxes=(box,), phrase="object"), prelabel=mask & False,
                                     accepted=mask))  # fmt: skip
    return out


def test_box_fit_recovers_the_known_shift_within_its_interval():
    fit = fit_box_margins(generated(60), n_boot=500)
    for side, sign in (("left", 1), ("top", 1), ("right", -1), ("bottom", -1)):
        f = fit[side]
        assert f.low <= sign * SHIFT <= f.high, (side, f)
    a, b = fit["alpha"], fit["beta"]
    print(f"alpha {a.value:.4f} [{a.low:.4f}, {a.high:.4f}] (true {SHIFT}); beta {b.value:.4f} [{b.low:.4f}, "
          f"{b.high:.4f}] (true 0); n={a.n}")
    assert a.low <= SHIFT <= a.high and b.value == 0.0
    assert side_shifts(Box(10, 10, 20, 20), np.zeros((H, W), bool)) is None


def test_gamma_is_exact_against_a_brute_force_grid():
    rng = np.random.default_rng(1)
    samples = []
    for s in generated(12):
        gt = s.accepted
        roi = (0, 0, W, H)
        pt = gt.copy()
        pt[rng.random((H, W)) < 0.02] = True  # noisy but right
        txt = np.zeros((H, W), bool)
        txt[: int(rng.integers(1, 6)), :] = True  # a thin wrong strip: small share of the RoI
        samples.append(replace(s, mask_point=pt, mask_text=txt, roi=roi))
    fit, table = fit_gamma(samples)
    brute = {g: np.mean([refuse_iou(s, g) for s in samples]) for g in np.linspace(0, 0.2, 401)}
    assert max(table["mean_iou"]) >= max(brute.values()) - 1e-12
    assert np.mean([refuse_iou(s, fit.value) for s in samples]) == pytest.approx(max(table["mean_iou"]))
    assert fit.low <= fit.value <= fit.high


def test_calibrate_refuses_below_min_samples_and_writes_a_profile(tmp_path, tiny_matcher, tiny_segmenter):
    from geoseg.pipeline import GeoSegPipeline

    with pytest.raises(CalibrationError, match="at least 20 accepted items"):
        calibrate(generated(5), GeoSegConfig(), None, tmp_path)
    (tmp_path / "bench").mkdir()
    samples = generated(24, tmp_path / "bench")

    def build(cfg):
        return GeoSegPipeline(cfg, matcher=tiny_matcher, segmenter=tiny_segmenter)

    rep = calibrate(samples, GeoSegConfig(), build, tmp_path / "cache", n_boot=200, budget_s=120,
                    text_score_grid=None, meaningless=True)  # fmt: skip
    assert rep.n_fit + rep.n_held_out == 24 and rep.n_held_out > 0
    assert rep.config.alpha == pytest.approx(rep.fitted["alpha"]["value"], abs=1e-4) and rep.config.beta == 0.0
    assert rep.search["tried"] and set(rep.after) == set(rep.before) and "all" in rep.after
    assert any("meaningless" in n for n in rep.notes)
    # a second run is served from the harness cache (same configs)
    again = calibrate(samples, GeoSegConfig(), build, tmp_path / "cache", n_boot=200, budget_s=120,
                      text_score_grid=None, meaningless=True)  # fmt: skip
    assert again.config == rep.config
    text = profile_text(rep, "tiny", "tiny-calibrated")
    p = tmp_path / "tiny-calibrated.toml"
    p.write_text(text)
    from geoseg.profiles import load_profile

    cfg = load_profile(p)
    assert cfg.alpha == rep.config.alpha and cfg.profile == "tiny-calibrated"
    assert cfg.model_version != GeoSegConfig().model_version
    print("profile:\n" + text)
