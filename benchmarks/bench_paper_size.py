"""Paper-size cost of GeoSeg's models per item, built from their published configs with random weights.

Compute does not depend on the weights, so random weights give the paper models' cost without downloading them:

* **SAM3** (stages 2-3): transformers ``Sam3Config()`` / ``Sam3TrackerConfig()`` defaults, the ``facebook/sam3``
  architecture (Perception-Encoder ViT-L/14, 32 blocks of which 4 global, 1008 px input; 840 M parameters in the
  detector), run through this project's ``Sam3TransformersSegmenter`` with the paper profile's options: one backbone
  forward per crop (``set_images``, ``--batches`` crops per forward), Route B = text prompt (``predict_text_many``,
  one detector forward per batch), Route A = 5 keypoints in one prompt (``predict_points``, per crop).
* **CLIP Surgery** (stage 3, Route A): open_clip ``ViT-B-16-quickgelu`` at 512 px with the 85 ImageNet templates
  (the paper profile's matcher), one similarity map per crop (the text feature is cached per phrase; its one-off
  cost is reported apart).
* **Qwen3-VL** (stage 1, optional ``--grounder``): the 32B and 4B text/vision configs (values of the published
  ``config.json`` files: 32B = 64 layers x 5120, 64 heads / 8 KV heads, MLP 25600, vision 27 x 1152; 4B = 36 layers x
  2560, 32 / 8 heads, MLP 9728, vision 24 x 1024), one 1024 x 1024 image (1024 visual tokens) and a 48-token prompt,
  generating exactly ``--answer-tokens`` tokens.

Where a model does not fit or would run for many minutes, fewer of its identical blocks are built and the measured
per-block time is scaled to the published block count (printed as "scaled"):

* on CPU (default ``--vit-blocks 2``): SAM3's ViT is built with 2 of its 32 blocks at full width and full input size
  (one windowed, one global), each block is timed with forward hooks, and the backbone time is reported as
  ``rest + 28 x windowed + 4 x global`` (a full 32-block forward takes ~6 minutes on the shared 2-core box; measured
  362 s). All heads (FPN necks, text encoder, DETR encoder/decoder, mask decoders, tracker) are full size.
* Qwen3-VL-32B has ~33 B parameters (~66 GB in bf16): it cannot be built in this machine's 24 GB of RAM, so on CPU
  it gets ``--grounder-layers`` decoder layers (default 1) and its decode/prefill times are scaled to 64 layers
  the same way. On a GPU with the memory (H100/H200 80-141 GB) pass ``--grounder-layers 0`` (all layers).

On a CUDA GPU (``--device cuda``, default when one is visible) everything runs in bf16, the whole SAM3 backbone
(``--vit-blocks 0`` = all 32), and the table adds peak VRAM; the lead runs it there. Per-item latency per stage,
items/s and (GPU) peak VRAM are printed for batch 1 and each ``--batches`` size; batch 1 is the baseline measured in
the same run (ratios ``x b1``). Random weights: masks and answers are meaningless; only times and memory are
measured.

    .venv/bin/python benchmarks/bench_paper_size.py                       # CPU: ~3 min of 2 cores' CPU time
    .venv/bin/python benchmarks/bench_paper_size.py --device cuda --batches 1,2,4,8 --iters 5 \\
        --grounder 32b,4b --grounder-layers 0 --json paper_size.json      # GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AERIAL = ROOT / "tests" / "data" / "aerial"

#: Published Qwen3-VL text/vision config values (config.json of Qwen3-VL-32B-Instruct and Qwen3-VL-4B-Instruct).
QWEN3_VL = {
    "32b": {
        "text": {
            "hidden_size": 5120,
            "intermediate_size": 25600,
            "num_hidden_layers": 64,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
        },
        "tie_word_embeddings": False,
        "vision": {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "out_hidden_size": 5120,
            "deepstack_visual_indexes": [8, 16, 24],
            "patch_size": 16,
        },
    },
    "4b": {
        "text": {
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
        },
        "tie_word_embeddings": True,
        "vision": {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2560,
            "deepstack_visual_indexes": [5, 11, 17],
            "patch_size": 16,
        },
    },
}


# ------------------------------------------------------------------------------------------------------ helpers


class Timer:
    """Wall time of a block, synchronising CUDA so GPU work is counted where it happens."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()


class BlockClock:
    """Forward time of each module in ``blocks`` (forward pre/post hooks), summed per block since ``reset``."""

    def __init__(self, blocks: list[Any], timer: Timer) -> None:
        self.timer = timer
        self.totals = [0.0] * len(blocks)
        self._t0 = [0.0] * len(blocks)
        for i, b in enumerate(blocks):
            b.register_forward_pre_hook(lambda m, a, i=i: self._start(i))
            b.register_forward_hook(lambda m, a, o, i=i: self._stop(i))

    def _start(self, i: int) -> None:
        self._t0[i] = self.timer.now()

    def _stop(self, i: int) -> None:
        self.totals[i] += self.timer.now() - self._t0[i]

    def reset(self) -> None:
        self.totals = [0.0] * len(self.totals)


def peak_memory(device: str) -> dict[str, float]:
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    if device.startswith("cuda"):
        import torch

        out["peak_vram_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def crops(n: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    with Image.open(AERIAL / "SOAP_031.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    boxes = [(20, 30, 260, 300), (150, 100, 390, 380), (0, 0, 300, 240), (90, 160, 400, 400)]
    return [rgb[y1:y2, x1:x2] for x1, y1, x2, y2 in (boxes[i % len(boxes)] for i in range(n))]


# --------------------------------------------------------------------------------------------------- the models


def build_segmenter(device: str, dtype: Any, vit_blocks: int):
    """Full-size SAM3 detector + tracker (random weights), ViT cut to ``vit_blocks`` blocks when > 0."""
    import torch
    from transformers import (
        Sam3Config,
        Sam3ImageProcessor,
        Sam3Model,
        Sam3Processor,
        Sam3TrackerConfig,
        Sam3TrackerModel,
        Sam3TrackerProcessor,
    )

    from geoseg.profiles import PAPER_SEGMENTER_OPTIONS
    from geoseg.segment.sam3_transformers import Sam3TransformersSegmenter
    from geoseg.tiny import build_tiny_sam3, model_cache_dir

    cfg = Sam3Config()
    vit = cfg.vision_config.backbone_config
    published = (vit.num_hidden_layers, list(vit.global_attn_indexes))
    if vit_blocks:
        if vit_blocks != 2:
            raise SystemExit("--vit-blocks must be 0 (all) or 2 (one windowed + one global block, scaled)")
        vit.num_hidden_layers, vit.global_attn_indexes = 2, [1]
    torch.manual_seed(0)
    with torch.device(device):
        detector = Sam3Model(cfg).to(dtype).eval()
        trk_cfg = Sam3TrackerConfig(vision_config=cfg.vision_config.to_dict())
        tracker = Sam3TrackerModel(trk_cfg).to(dtype).eval()
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone  # SAM3 shares one backbone
    # The tokenizer only turns the phrase into ids (SAM3's text context is 32 tokens either way): the tiny model's
    # offline word-level tokenizer serves, with the full-size image processor (1008 px).
    tiny = build_tiny_sam3(model_cache_dir())
    processor = Sam3Processor.from_pretrained(tiny / "detector")
    processor.image_processor = Sam3ImageProcessor()
    tracker_processor = Sam3TrackerProcessor(image_processor=Sam3ImageProcessor())
    seg = Sam3TransformersSegmenter(
        detector, processor, tracker, tracker_processor, device=device, meaningless=True, **PAPER_SEGMENTER_OPTIONS
    )
    return seg, published


def build_matcher(device: str, dtype: Any):
    import open_clip

    from geoseg.clip_surgery import ClipSurgeryMatcher
    from geoseg.profiles import PAPER_MATCHER, PAPER_MATCHER_OPTIONS

    model = open_clip.create_model(PAPER_MATCHER, pretrained=None, device=device).to(dtype)
    opts = {k: v for k, v in PAPER_MATCHER_OPTIONS.items() if k != "pretrained"}
    return ClipSurgeryMatcher(model, open_clip.get_tokenizer(PAPER_MATCHER), device=device, meaningless=True, **opts)


# ------------------------------------------------------------------------------------------------- stages 2-3


def bench_segmentation(args: argparse.Namespace, device: str, dtype: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    timer = Timer(device)
    t0 = time.perf_counter()
    seg, (n_blocks, global_idx) = build_segmenter(device, dtype, args.vit_blocks)
    matcher = build_matcher(device, dtype)
    load_s = time.perf_counter() - t0
    scaled = bool(args.vit_blocks)
    clock = BlockClock(list(seg.backbone.layers), timer) if scaled else None
    n_global, n_window = len(global_idx), n_blocks - len(global_idx)
    t = timer.now()
    matcher.text_feature("tree")
    matcher.text_feature("")
    text_once = timer.now() - t
    points = np.array([[40.0, 50.0], [120.0, 80.0], [200.0, 200.0], [60.0, 180.0], [150.0, 140.0]])

    def one_round(b: int) -> dict[str, float]:
        batch = crops(b)
        row: dict[str, float] = {}
        t = timer.now()
        if clock:
            clock.reset()
        with seg_batch(seg, b):
            states = seg.set_images(batch)
        enc = timer.now() - t
        if clock:  # rest of the 2-block backbone + the published block counts at the measured per-block times
            t_win, t_glob = clock.totals
            enc = enc - t_win - t_glob + n_window * t_win + n_global * t_glob
        row["encode"] = enc / b
        t = timer.now()
        seg.predict_text_many(states, ["tree"] * b)
        row["route_b"] = (timer.now() - t) / b
        t = timer.now()
        for s in states:
            seg.predict_points(s, points)
        row["route_a_sam"] = (timer.now() - t) / b
        t = timer.now()
        for c in batch:
            matcher.similarity_map(c, "tree")
        row["clip"] = (timer.now() - t) / b
        row["total"] = sum(row.values())
        return row

    results: dict[str, Any] = {}
    for b in args.batches:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        if args.warmup:
            one_round(b)
        rows = []
        for i in range(args.iters):
            rows.append(one_round(b))
            print(
                f"# ... batch {b}, round {i + 1}/{args.iters}: {rows[-1]['total']:.2f} s/crop",
                file=sys.stderr,
                flush=True,
            )
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        med["items_per_s"] = 1.0 / med["total"]
        med.update(peak_memory(device))
        results[str(b)] = med
    return {
        "load_s": load_s,
        "clip_text_feature_once_s": text_once,
        "vit_blocks_built": args.vit_blocks or n_blocks,
        "vit_blocks_published": n_blocks,
        "scaled": scaled,
        "batches": results,
    }


class seg_batch:  # noqa: N801 - a tiny context manager
    """Temporarily run ``b`` crops per backbone forward."""

    def __init__(self, seg: Any, b: int) -> None:
        self.seg, self.b = seg, b

    def __enter__(self) -> None:
        self.old, self.seg.encode_batch_size = self.seg.encode_batch_size, self.b

    def __exit__(self, *exc: Any) -> None:
        self.seg.encode_batch_size = self.old


# ------------------------------------------------------------------------------------------------------ stage 1


def bench_grounder(size: str, args: argparse.Namespace, device: str, dtype: Any) -> dict[str, Any]:
    """Qwen3-VL at a published size with random weights: one image + prompt -> exactly ``answer_tokens`` tokens."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = QWEN3_VL[size]
    layers = spec["text"]["num_hidden_layers"]
    built = layers if args.grounder_layers in (0, None) else min(args.grounder_layers, layers)
    text = {**spec["text"], "num_hidden_layers": built}
    cfg = Qwen3VLConfig(text_config=text, vision_config=spec["vision"], tie_word_embeddings=spec["tie_word_embeddings"])
    timer = Timer(device)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(cfg).to(dtype).eval()
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    decoder = list(model.model.language_model.layers)
    clock = BlockClock(decoder, timer)
    side = args.grounder_image_px // spec["vision"]["patch_size"]  # 1024 px: 64 x 64 patches -> 1024 visual tokens
    n_vis = side * side // 4
    ids = [cfg.vision_start_token_id] + [cfg.image_token_id] * n_vis + [cfg.vision_end_token_id]
    ids += [int(i) for i in torch.randint(1000, 100000, (48,))]
    input_ids = torch.tensor([ids], device=device)
    patch_dim = 3 * cfg.vision_config.temporal_patch_size * spec["vision"]["patch_size"] ** 2
    pixel_values = torch.randn(side * side, patch_dim, device=device, dtype=dtype)
    grid = torch.tensor([[1, side, side]], device=device)
    kwargs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
        "do_sample": False,
        "max_new_tokens": args.answer_tokens,
        "min_new_tokens": args.answer_tokens,
    }
    rows = []
    for _ in range(max(1, args.grounder_iters)):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        clock.reset()
        t = timer.now()
        with torch.inference_mode():
            out = model.generate(**kwargs)
        total = timer.now() - t
        layer_t = sum(clock.totals)
        scaled_total = total - layer_t + layer_t * layers / built
        rows.append({"latency_s": scaled_total, "measured_s": total, "new_tokens": out.shape[1] - input_ids.shape[1]})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["tokens_per_s"] = med["new_tokens"] / med["latency_s"]
    med.update(peak_memory(device))
    del model
    return {
        "size": size,
        "decoder_layers_built": built,
        "decoder_layers_published": layers,
        "params_built_b": params / 1e9,
        "load_s": load_s,
        "scaled": built != layers,
        "visual_tokens": n_vis,
        **med,
    }


# -------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The benchmark as one linear script (arguments, builds, timed rounds, the printed table): longer than 80 lines
    on purpose, each step runs once in order."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when visible), cpu or cuda[:n]")
    ap.add_argument("--batches", default="1,2", help="crops per SAM3 forward to measure, e.g. 1,2,4,8 (1 = baseline)")
    ap.add_argument("--iters", type=int, default=1, help="timed rounds per batch size (median reported)")
    ap.add_argument("--warmup", action="store_true", help="one untimed round per batch size first (GPU: advised)")
    ap.add_argument("--vit-blocks", type=int, default=None, help="0 = all 32 SAM3 ViT blocks; 2 = built and scaled")
    ap.add_argument("--grounder", default="", help="comma list of Qwen3-VL sizes to run: 32b, 4b (default none)")
    ap.add_argument("--grounder-layers", type=int, default=None, help="decoder layers to build (0 = all)")
    ap.add_argument("--grounder-iters", type=int, default=1)
    ap.add_argument("--answer-tokens", type=int, default=64, help="fixed answer length of the grounder")
    ap.add_argument("--grounder-image-px", type=int, default=1024, help="grounder input side (multiple of 32)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.grounder_image_px % 32 or args.grounder_image_px < 32:
        raise SystemExit("--grounder-image-px must be a positive multiple of 32 (patch 16, 2 x 2 merge)")
    args.batches = sorted({int(b) for b in str(args.batches).split(",") if b.strip()} | {1})
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA GPU is visible")
    gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if gpu else torch.float32
    if args.vit_blocks is None:
        args.vit_blocks = 0 if gpu else 2
    if args.grounder_layers is None:
        args.grounder_layers = 0 if gpu else 1
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(0) if gpu else f"CPU ({platform.processor() or platform.machine()})"
    print(f"# bench_paper_size — {where}, {str(dtype).replace('torch.', '')}, torch threads={args.threads}")
    if not gpu:
        print("# no CUDA GPU visible: CPU figures only (the bf16 GPU table needs a run with --device cuda)")
    print("# random weights (compute does not depend on them): masks and answers mean nothing")

    t_run = time.perf_counter()
    seg = bench_segmentation(args, device, dtype)
    scaled = " (ViT: 2 of 32 blocks built, scaled to 28 windowed + 4 global)" if seg["scaled"] else ""
    print(f"\n## Stages 2-3 per crop: SAM3 full size + CLIP ViT-B/16 @ 512{scaled}")
    print(
        f"# models built in {seg['load_s']:.0f} s; CLIP text feature (85 templates, phrase + empty) once per "
        f"phrase: {seg['clip_text_feature_once_s']:.2f} s; median of {args.iters} round(s)"
    )
    cols = ["encode", "route_b", "route_a_sam", "clip", "total"]
    mem = "peak_vram_gb" if gpu else "peak_rss_gb"
    print("| crops per SAM3 forward | " + " | ".join(f"{c} s/crop" for c in cols) + f" | crops/s | x b1 | {mem} |")
    print("|---:|" + "---:|" * (len(cols) + 3))
    base = seg["batches"]["1"]["items_per_s"]
    for b, row in seg["batches"].items():
        cells = " | ".join(f"{row[c]:.3f}" for c in cols)
        print(f"| {b} | {cells} | {row['items_per_s']:.4f} | {row['items_per_s'] / base:.2f} | {row[mem]:.1f} |")
    print(
        "# encode = SAM3 ViT backbone (one forward per batch, per crop); route_b = text prompt (neck + detector, one "
        "forward per batch); route_a_sam = 5-point prompt (tracker neck + decoder, per crop); clip = CLIP Surgery "
        "similarity map (per crop, not batched)"
    )

    out: dict[str, Any] = {"device": where, "dtype": str(dtype), "gpu": gpu, "segmentation": seg, "grounders": []}
    for size in [s.strip().lower() for s in args.grounder.split(",") if s.strip()]:
        if size not in QWEN3_VL:
            raise SystemExit(f"--grounder sizes are {sorted(QWEN3_VL)}, got {size!r}")
        g = bench_grounder(size, args, device, dtype)
        out["grounders"].append(g)
        note = ""
        if g["scaled"]:
            note = (
                f" ({g['decoder_layers_built']} of {g['decoder_layers_published']} decoder layers built, "
                "per-layer time scaled"
            )
            note += "; 32B weights (~66 GB bf16) do not fit in 24 GB RAM)" if size == "32b" and not gpu else ")"
        print(f"\n## Stage 1: Qwen3-VL-{size.upper()}{note}")
        print(f"| visual tokens | answer tokens | latency s/item | tokens/s | {mem} |")
        print("|---:|---:|---:|---:|---:|")
        print(
            f"| {g['visual_tokens']} | {g['new_tokens']:.0f} | {g['latency_s']:.2f} | {g['tokens_per_s']:.2f} | "
            f"{g[mem]:.1f} |"
        )
    out["wall_s"] = time.perf_counter() - t_run
    print(f"\n# wall time {out['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
