"""Benchmark: labeling.brush vs label_studio_sdk.converter.brush on 1024x1024 masks, measured in the same run.

    .venv/bin/python benchmarks/bench_brush.py [--size 1024] [--repeat 5]

Prints the best-of-N time of each codec and the speed-up ratios (SDK time / ours), and checks the outputs are identical.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from label_studio_sdk.converter import brush as sdk

from labeling.brush import mask_to_rle, rle_to_mask


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5, help="runs of our codec (best taken)")
    ap.add_argument("--sdk-repeat", type=int, default=2, help="runs of the SDK codec (best taken)")
    args = ap.parse_args()
    n = args.size
    yy, xx = np.mgrid[:n, :n]
    masks = {
        "blob": ((yy - 0.49 * n) / (0.3 * n)) ** 2 + ((xx - 0.47 * n) / (0.2 * n)) ** 2 < 1,
        "noise50": np.random.default_rng(0).random((n, n)) < 0.5,
    }
    print(f"{'mask':8s} {'op':7s} {'sdk s':>9s} {'ours s':>9s} {'ratio':>7s}  (best of runs, same process)")
    for name, mask in masks.items():
        u8 = mask.astype(np.uint8) * 255
        ref = sdk.mask2rle(u8)
        ours = mask_to_rle(mask)
        assert ours == ref, "encoder output differs from the SDK"
        assert np.array_equal(rle_to_mask(ref, n, n), mask), "decoder output differs"
        t_sdk_enc = _best(lambda u8=u8: sdk.mask2rle(u8), args.sdk_repeat)
        t_enc = _best(lambda mask=mask: mask_to_rle(mask), args.repeat)
        t_sdk_dec = _best(lambda ref=ref: sdk.decode_rle(ref), args.sdk_repeat)
        t_dec = _best(lambda ref=ref: rle_to_mask(ref, n, n), args.repeat)
        print(f"{name:8s} {'encode':7s} {t_sdk_enc:9.4f} {t_enc:9.5f} {t_sdk_enc / t_enc:6.1f}x")
        print(f"{name:8s} {'decode':7s} {t_sdk_dec:9.4f} {t_dec:9.5f} {t_sdk_dec / t_dec:6.1f}x")
        print(f"{name:8s} rle bytes: {len(ref)}")


if __name__ == "__main__":
    main()
