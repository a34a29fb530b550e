"""Per-stage time per item of GeoSegPipeline with the tiny models on CPU, and the shared-encoding saving.

Two variants run in the same process on the same items, interleaved item by item so machine load hits both alike:

* ``shared`` (the pipeline's default): SAM3's ViT backbone runs once per crop; Route A (points) and Route B (text)
  reuse it.
* ``naive``: each route hands ``pixel_values`` to its own transformers model (``Sam3TrackerModel`` /
  ``Sam3Model``), i.e. the crop is encoded once per route.

Items are the real aerial images and queries of ``tests/data/aerial/queries.csv``. Stage 1 runs the tiny random
Qwen3-VL grounder for real (its time is reported; constrained decoding makes its random answers well-formed boxes of
random size), and stages 2-3 use a fixed box (the central 50 % of the image, phrase = the query) so every item
exercises the same crop size. Constrained vs free decoding is measured in ``benchmarks/bench_grounding.py``.
The tiny models' masks are meaningless; only times and encoder counts are measured.

    .venv/bin/python benchmarks/bench_pipeline.py [--rounds 3] [--threads 1] [--grounder tiny|none] [--json out.json]
        [--sam3-size 112 --sam3-width 32 --sam3-layers 2]   # a larger random SAM3 backbone shows the scaling
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoseg.pipeline import STAGES, GeoSegPipeline  # noqa: E402
from geoseg.types import TINY_MODEL_WARNING, BackendSpec, Box, GeoSegConfig, Grounding  # noqa: E402

AERIAL = ROOT / "tests" / "data" / "aerial"


def load_items() -> list[tuple[str, object, str]]:
    from geoseg.imagery import read_image

    items = []
    cache: dict[str, object] = {}
    with open(AERIAL / "queries.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["image"] not in cache:
                cache[row["image"]] = read_image(AERIAL / row["image"]).rgb
            items.append((row["image"], cache[row["image"]], row["query"]))
    return items


def central_box(rgb) -> Box:
    H, W = rgb.shape[:2]
    return Box(0.25 * W, 0.25 * H, 0.75 * W, 0.75 * H)


def main(argv: list[str] | None = None) -> dict:
    """The benchmark as one linear script (arguments, warm-up, timed rounds, the printed ratios): longer than 80
    lines on purpose, each step runs once in order."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="passes over the items (after one warm-up item)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = least noise on a shared box)")
    ap.add_argument("--grounder", choices=("tiny", "none"), default="tiny")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--sam3-size", type=int, default=112, help="SAM3 input side in px (multiple of 56; real: 1008)")
    ap.add_argument("--sam3-width", type=int, default=32, help="SAM3 ViT width (real: 1024)")
    ap.add_argument("--sam3-layers", type=int, default=2, help="SAM3 ViT depth (real: 32)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from geoseg.clip_surgery import build_matcher
    from geoseg.segment import build_segmenter
    from geoseg.tiny import build_tiny_sam3, model_cache_dir

    t0 = time.perf_counter()
    matcher = build_matcher(BackendSpec("tiny"))
    sam3 = build_tiny_sam3(
        model_cache_dir(), image_size=args.sam3_size, vit_width=args.sam3_width, vit_layers=args.sam3_layers
    )

    def segmenter(share: bool):
        opts = {"tracker_model": str(sam3 / "tracker"), "share_encoding": share, "device": "cpu"}
        return build_segmenter(BackendSpec("sam3-transformers", str(sam3 / "detector"), opts))

    shared_seg, naive_seg = segmenter(True), segmenter(False)
    grounder = None
    if args.grounder == "tiny":
        from geoseg.grounding import build_grounder

        grounder = build_grounder(BackendSpec("tiny"))
    load_s = time.perf_counter() - t0

    cfg = GeoSegConfig(profile="tiny")
    pipes = {
        "shared": GeoSegPipeline(cfg, grounder=grounder, matcher=matcher, segmenter=shared_seg),
        "naive": GeoSegPipeline(cfg, grounder=grounder, matcher=matcher, segmenter=naive_seg),
    }
    items = load_items()

    def one(name: str, rgb, query: str) -> dict[str, float]:
        timings: dict[str, float] = {}
        if grounder is not None:
            t = time.perf_counter()
            grounder.ground(rgb, query)  # real tiny generation; its (random) answer is not used
            timings["grounding"] = time.perf_counter() - t
        g = Grounding(boxes=(central_box(rgb),), phrase=query, raw_text="fixed benchmark box")
        return dict(pipes[name].segment(rgb, query, g, timings).timings)

    for name in pipes:  # warm-up (first-call allocations, lazy imports)
        one(name, items[0][1], items[0][2])
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in pipes}
    calls_before = {"shared": shared_seg.encoder_calls, "naive": naive_seg.encoder_calls}
    for _ in range(args.rounds):
        for _key, rgb, query in items:
            for name in pipes:
                samples[name].append(one(name, rgb, query))
    n_items = args.rounds * len(items)
    calls = {
        "shared": (shared_seg.encoder_calls - calls_before["shared"]) / n_items,
        "naive": (naive_seg.encoder_calls - calls_before["naive"]) / n_items,
    }

    stages = [s for s in STAGES if any(s in x for v in samples.values() for x in v)] + ["total"]
    seg_stages = ("encode", "similarity", "keypoints", "route_a", "route_b", "fusion", "crop")
    table: dict[str, dict[str, float]] = {}
    for name, runs in samples.items():
        row = {s: 1000.0 * statistics.mean(r.get(s, 0.0) for r in runs) for s in stages}
        row["stages_2_3"] = 1000.0 * statistics.mean(sum(r.get(s, 0.0) for s in seg_stages) for r in runs)
        row["stages_2_3_median"] = 1000.0 * statistics.median(sum(r.get(s, 0.0) for s in seg_stages) for r in runs)
        row["encoder_calls_per_item"] = calls[name]
        table[name] = row

    cols = stages + ["stages_2_3", "stages_2_3_median", "encoder_calls_per_item"]
    print(f"# bench_pipeline — tiny models, CPU, torch threads={args.threads}, {n_items} items per variant")
    print(f"# SAM3 random backbone: {args.sam3_size} px input, ViT width {args.sam3_width}, {args.sam3_layers} layers")
    print(f"# model load {load_s:.1f} s; {TINY_MODEL_WARNING}")
    print("| variant | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
    ratio = table["naive"]["stages_2_3"] / table["shared"]["stages_2_3"]
    ratio_med = table["naive"]["stages_2_3_median"] / table["shared"]["stages_2_3_median"]
    print(
        f"\nnaive / shared, stages 2-3 per item: mean {ratio:.2f}x, median {ratio_med:.2f}x "
        f"(encoder calls per item {calls['naive']:.0f} vs {calls['shared']:.0f}); times in ms"
    )
    out = {
        "rounds": args.rounds,
        "items": n_items,
        "threads": args.threads,
        "sam3": {"size": args.sam3_size, "width": args.sam3_width, "layers": args.sam3_layers},
        "load_s": load_s,
        "table_ms": table,
        "ratio_naive_over_shared_stages_2_3": ratio,
        "ratio_median": ratio_med,
        "note": TINY_MODEL_WARNING,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
