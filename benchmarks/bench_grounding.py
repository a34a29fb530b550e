"""Constrained vs free decoding of the grounder: tokens/s and items/s on the tiny random Qwen3-VL, same run.

Both grounders load the same tiny model directory; items (the real aerial images of ``tests/data/aerial`` x a few
queries) are run interleaved, one constrained then one free, so machine load hits both alike. Reported per mode:
items/s, generated tokens/s (new tokens up to and including EOS), tokens per answer and the share of answers that
parse into a box; then the ratios constrained / free. A second section times the constraint alone (the vocabulary
walk per decoding step, no model) on a synthetic 151,643-token vocabulary, the size of Qwen's, to show what the mask
costs per step at real vocabulary size. The tiny model's boxes are random: only throughput and well-formedness are
measured.

    .venv/bin/python benchmarks/bench_grounding.py [--rounds 2] [--threads 1] [--max-new-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoseg.types import TINY_MODEL_WARNING  # noqa: E402

AERIAL = ROOT / "tests" / "data" / "aerial"
QUERIES = ("the largest tree crown", "a road next to the field", "the bare soil patch")


def load_images() -> list:
    from geoseg.imagery import read_image

    names = sorted(p for p in AERIAL.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif"))
    return [read_image(p).rgb for p in names]


def run_models(args: argparse.Namespace) -> dict:
    from geoseg.grounding.transformers_backend import TransformersGrounder
    from geoseg.tiny import build_tiny_grounder_model, model_cache_dir

    model_dir = build_tiny_grounder_model(model_cache_dir())
    common = {"max_new_tokens": args.max_new_tokens, "meaningless": True, "device": "cpu"}
    modes = {
        "constrained": TransformersGrounder(str(model_dir), constrained=True, allow_no_target=False, **common),
        "free": TransformersGrounder(str(model_dir), constrained=False, **common),
    }
    images = load_images()
    items = [(im, q) for im in images for q in QUERIES]
    for g in modes.values():  # warm-up (and the constrained one builds its vocabulary index here)
        g.ground(items[0][0], items[0][1])
    stats = {m: {"seconds": 0.0, "tokens": 0, "items": 0, "boxes": 0} for m in modes}
    for _ in range(args.rounds):
        for image, query in items:
            for name, g in modes.items():
                before = g.generated_tokens
                t0 = time.perf_counter()
                out = g.ground(image, query)
                stats[name]["seconds"] += time.perf_counter() - t0
                stats[name]["tokens"] += g.generated_tokens - before
                stats[name]["items"] += 1
                stats[name]["boxes"] += bool(out.boxes)
    for s in stats.values():
        s["items_per_s"] = s["items"] / s["seconds"]
        s["tokens_per_s"] = s["tokens"] / s["seconds"]
        s["tokens_per_item"] = s["tokens"] / s["items"]
        s["box_rate"] = s["boxes"] / s["items"]
    c, f = stats["constrained"], stats["free"]
    return {
        "modes": stats,
        "ratio_tokens_per_s": c["tokens_per_s"] / f["tokens_per_s"],
        "ratio_items_per_s": c["items_per_s"] / f["items_per_s"],
        "items": len(items) * args.rounds,
    }


def synthetic_vocab(n: int, seed: int = 0) -> list[str]:
    """Token texts shaped like a byte-level BPE vocabulary: every ASCII character, digits alone, words with and
    without a leading space (about 1 % after a quote), punctuation runs (some with quotes)."""
    rng = random.Random(seed)
    vocab = list(string.printable[:95])
    punct = ['"', '":', '",', '"}', "{", "}", "[", "]", "],", "},", ":", ",", ", ", ": ", '{"', '["', "[[", "]]"]
    vocab += punct
    letters = string.ascii_lowercase
    while len(vocab) < n:
        w = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
        lead = rng.choices(["", " ", '"', "_", "("], weights=[40, 55, 1, 2, 2])[0]  # ~1 % open a quote, as in BPE
        vocab.append(lead + (w.capitalize() if rng.random() < 0.2 else w))
    return vocab[:n]


def run_mask_cost(args: argparse.Namespace) -> dict:
    from geoseg.grounding.constrained import TokenIndex, advance, answer_grammar, initial_state

    vocab = synthetic_vocab(151_643)
    t0 = time.perf_counter()
    index = TokenIndex(vocab)
    build_s = time.perf_counter() - t0
    grammar = answer_grammar("geoseg", "norm1000", (1000, 1000))
    answer = '{"bbox": [123, 456, 789, 900], "prompt": "red roofed building"}'
    per_step = []
    st = initial_state(grammar)
    for ch in answer:
        t = time.perf_counter()
        index.allowed(st)
        index.allowed_plain(st)
        per_step.append(time.perf_counter() - t)
        st = advance(st, ch)
    return {
        "vocab": len(vocab),
        "index_build_s": build_s,
        "mask_ms_per_step_median": statistics.median(per_step) * 1000,
        "mask_ms_per_step_max": max(per_step) * 1000,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = least noise on a shared box)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = {"models": run_models(args), "mask_cost": run_mask_cost(args), "warning": TINY_MODEL_WARNING}
    m = out["models"]
    print(f"{m['items']} groundings per mode on the tiny random Qwen3-VL ({TINY_MODEL_WARNING})")
    print(f"{'mode':<12}{'items/s':>9}{'tokens/s':>10}{'tok/item':>10}{'box rate':>10}")
    for name, s in m["modes"].items():
        print(f"{name:<12}{s['items_per_s']:>9.2f}{s['tokens_per_s']:>10.1f}{s['tokens_per_item']:>10.1f}"
              f"{s['box_rate']:>10.0%}")
    print(f"constrained / free: tokens/s x{m['ratio_tokens_per_s']:.2f}, items/s x{m['ratio_items_per_s']:.2f}")
    c = out["mask_cost"]
    print(f"mask alone on a {c['vocab']}-token vocabulary: index built in {c['index_build_s']:.1f} s, "
          f"{c['mask_ms_per_step_median']:.2f} ms per step (median), {c['mask_ms_per_step_max']:.2f} ms max")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
