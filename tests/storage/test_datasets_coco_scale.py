"""The COCO export streams: exporting 100,000 triplets peaks at about the same RSS as exporting ~8,300 of them
(one domain and level of the same database), each export in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.coco_scale import seed_bulk

ROOT = Path(__file__).resolve().parents[2]


def _export(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.fixtures.coco_scale", "export", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip())


@pytest.mark.slow
def test_peak_rss_flat_from_8k_to_100k(tmp_path):
    url, blobs = f"sqlite:///{tmp_path / 'db.sqlite'}", str(tmp_path / "blobs")
    seed_bulk(url, blobs, 100_000)
    small = _export(url, blobs, str(tmp_path / "small"), "Urban", "L1")
    big = _export(url, blobs, str(tmp_path / "big"))
    print(f"COCO export, subset: {small}\nCOCO export, all: {big}")
    assert 8000 < small["annotations"] < 9000 and big["annotations"] == 100_000
    assert big["file_mb"] > 10 * small["file_mb"]
    # twelve times the triplets (and file size) must not grow the peak RSS by more than a few MB
    assert big["peak_rss_mb"] - small["peak_rss_mb"] < 16, (small, big)
