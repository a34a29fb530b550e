#!/usr/bin/env python3
"""Generate the small test benchmark used by the evaluation tests (torchgeo-style fixture script).

Deterministic: the same arguments always give byte-identical files. Images are generated (a smooth random
"terrain" plus coloured objects), masks are simple shapes (rectangles, ellipses, a road-like band) drawn where the
objects are, so every query has a well-defined answer. The images are synthetic: they exercise the metrics, the
harness and the report, not a model's skill.

    python tests/data/make_bench.py                      # writes tests/data/geoseg_bench (GeoSeg-Bench layout)
    python tests/data/make_bench.py OUT --layout earthreason --per-domain 3 --size 48
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

DOMAINS = ("Urban", "Rural", "Traffic", "Nature")
LEVELS = ("L1", "L1", "L2", "L3")  # cycled: L1 is the most common level, as in GeoSeg-Bench
OBJECTS = {
    "Urban": ("building", "rect", (200, 60, 50)),
    "Rural": ("farm field", "rect", (60, 170, 60)),
    "Traffic": ("road", "band", (90, 90, 90)),
    "Nature": ("lake", "ellipse", (40, 80, 200)),
}
QUESTIONS = {
    "L1": "Segment the {obj}.",
    "L2": "Which area would a planner inspect first? Segment the {obj}.",
    "L3": "Given the surroundings, where would the {obj} most likely flood or fail? Segment it.",
}


def _terrain(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.integers(70, 180, size=(4, 4, 3)).astype(np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((size, size), Image.BILINEAR)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    return np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "rect":
        w, h = rng.integers(size // 6, size // 2, size=2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        return (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
    if kind == "ellipse":
        cx, cy = rng.integers(size // 4, 3 * size // 4, size=2)
        ax, ay = rng.integers(size // 8, size // 4, size=2)
        return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
    if kind == "band":
        c = rng.integers(size // 4, 3 * size // 4)
        half = max(2, size // 16)
        return np.abs(xx - c) <= half if rng.random() < 0.5 else np.abs(yy - c) <= half
    raise ValueError(kind)


def make_samples(per_domain: int, size: int, seed: int):
    """Yield (id, domain, level, image uint8 (H,W,3), mask bool (H,W), question)."""
    rng = np.random.default_rng(seed)
    n = 0
    for domain in DOMAINS:
        obj, kind, colour = OBJECTS[domain]
        for i in range(per_domain):
            level = LEVELS[i % len(LEVELS)]
            img = _terrain(rng, size)
            mask = _shape_mask(rng, kind, size)
            img[mask] = (0.3 * img[mask] + 0.7 * np.array(colour)).astype(np.uint8)
            n += 1
            yield f"{domain.lower()}_{i:03d}", domain, level, img, mask, QUESTIONS[level].format(obj=obj)


def make_bench(root: Path, per_domain: int = 4, size: int = 64, seed: int = 0, layout: str = "geoseg") -> Path:
    """Write the benchmark under ``root`` and return it. ``layout``: ``geoseg`` or ``earthreason``."""
    root = Path(root)
    if layout not in ("geoseg", "earthreason"):
        raise ValueError(f"layout must be geoseg or earthreason, got {layout!r}")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / ("masks" if layout == "geoseg" else "labels")).mkdir(parents=True, exist_ok=True)
    annotations: dict[str, list[dict]] = {d: [] for d in DOMAINS}
    for sid, domain, level, img, mask, question in make_samples(per_domain, size, seed):
        Image.fromarray(img, "RGB").save(root / "images" / f"{sid}.png", optimize=False)
        m8 = mask.astype(np.uint8) * 255
        if layout == "geoseg":
            Image.fromarray(m8, "L").save(root / "masks" / f"{sid}.png")
            annotations[domain].append({
                "id": sid, "file_name": f"images/{sid}.png", "mask_path": f"masks/{sid}.png",
                "height": size, "width": size, "difficulty": level, "question": question,
            })
        else:
            Image.fromarray(m8, "L").save(root / "labels" / f"{sid}.png")
            (root / "QAs").mkdir(exist_ok=True)
            qa = {"questions": [question, question.replace("Segment", "Outline")], "answer": [f"the {domain} target"]}
            (root / "QAs" / f"{sid}.json").write_text(json.dumps(qa, indent=1))
    if layout == "geoseg":
        (root / "annotations").mkdir(exist_ok=True)
        for domain, entries in annotations.items():
            (root / "annotations" / f"{domain}.json").write_text(json.dumps(entries, indent=1))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=str(Path(__file__).parent / "geoseg_bench"))
    ap.add_argument("--per-domain", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", default="geoseg", choices=("geoseg", "earthreason"))
    a = ap.parse_args()
    print(make_bench(Path(a.out), a.per_domain, a.size, a.seed, a.layout))


if __name__ == "__main__":
    main()
