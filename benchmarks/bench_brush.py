"""Benchmark: labeling.brush vs label_studio_sdk.converter.brush on 1024x1024 masks, measured in the same run.

    .venv/bin/python benchmarks/bench_brush.py [--size 1024] [--rounds 3] [--repeat 10]

Prints the best time of each codec (measured in alternation, so both meet the same machine load) and the
speed-up ratios (SDK time / ours); checks first that the outputs are identical.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from label_studio_sdk.converter import brush as sdk

from labeling.brush import mask_to_rle, rle_to_mask


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _interleaved(sdk_fn, our_fn, rounds: int, ours_per_round: int) -> tuple[float, float]:
    """Best SDK time and best time of ours, measured in alternation so that both meet the same machine load."""
    best_sdk = best_ours = float("inf")
    for _ in range(rounds):
        best_sdk = min(best_sdk, _time(sdk_fn))
        for _ in range(ours_per_round):
            best_ours = min(best_ours, _time(our_fn))
    return best_sdk, best_ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (SDK once, ours --repeat times)")
    ap.add_argument("--repeat", type=int, default=10, help="runs of our codec per round")
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
        t_sdk_enc, t_enc = _interleaved(
            lambda u8=u8: sdk.mask2rle(u8), lambda mask=mask: mask_to_rle(mask), args.rounds, args.repeat
        )
        t_sdk_dec, t_dec = _interleaved(
            lambda ref=ref: sdk.decode_rle(ref), lambda ref=ref: rle_to_mask(ref, n, n), args.rounds, args.repeat
        )
        print(f"{name:8s} {'encode':7s} {t_sdk_enc:9.4f} {t_enc:9.5f} {t_sdk_enc / t_enc:6.1f}x")
        print(f"{name:8s} {'decode':7s} {t_sdk_dec:9.4f} {t_dec:9.5f} {t_sdk_dec / t_dec:6.1f}x")
        print(f"{name:8s} rle bytes: {len(ref)}")


if __name__ == "__main__":
    main()
