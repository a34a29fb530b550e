"""The COCO export streams: exporting 100,000 triplets peaks at about the same RSS as exporting 10,000."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "tests.coco_scale", *args], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return out.stdout


@pytest.mark.slow
def test_peak_rss_flat_from_10k_to_100k(tmp_path):
    peaks = {}
    for n in (10_000, 100_000):
        url = f"sqlite:///{tmp_path / f'db{n}.sqlite'}"
        _run("seed", url, str(tmp_path / "blobs"), str(n))
        stats = json.loads(_run("export", url, str(tmp_path / "blobs"), str(tmp_path / f"out{n}")).strip())
        assert stats["annotations"] == n
        peaks[n] = stats["peak_rss_mb"]
        print(f"COCO export of {n} triplets: {stats}")
    # ten times the triplets (and a ten times larger file) must not grow the peak by more than a few MB
    assert peaks[100_000] - peaks[10_000] < 16, peaks
