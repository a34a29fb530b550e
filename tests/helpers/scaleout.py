"""A fixed-time pipeline for scale-out tests and benchmarks: ``py:tests.helpers.scaleout:sleepy_pipeline``.

The model stage sleeps ``GEOLABEL_TEST_MODEL_SLEEP_S`` seconds per item (a number, or the path of a file holding one,
read on every call so a test can change it for running workers; sleep-bound, so a 2-core machine does not cap
several workers) and, when ``GEOLABEL_TEST_MODEL_LOG`` names a file, appends one line per model call:
``<pid>\\t<parent pid>\\t<query>`` (one ``write`` of a short line on an ``O_APPEND`` file: lines from several processes
do not interleave). Counting the lines per query shows duplicated model work. The masks are a fixed centred ellipse:
geometric placeholders that mean nothing.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from geoseg.types import BackendSpec, Box, GeoSegConfig, Grounding

SLEEP_ENV = "GEOLABEL_TEST_MODEL_SLEEP_S"
LOG_ENV = "GEOLABEL_TEST_MODEL_LOG"


def sleep_s() -> float:
    raw = os.environ.get(SLEEP_ENV, "") or "0"
    try:
        return float(raw)
    except ValueError:
        try:
            return float(open(raw).read().strip() or 0)  # noqa: SIM115 - a tiny file, closed by the GC at once
        except (OSError, ValueError):
            return 0.0


class SleepyGrounder:
    meaningless = True

    def ground(self, image: np.ndarray, query: str) -> Grounding:
        time.sleep(sleep_s())
        path = os.environ.get(LOG_ENV)
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()}\t{os.getppid()}\t{query}\n".encode())
            finally:
                os.close(fd)
        h, w = image.shape[:2]
        return Grounding(boxes=(Box(w * 0.2, h * 0.2, w * 0.8, h * 0.8),), phrase=query[:40], raw_text="{}")


class FlatMatcher:
    meaningless = True

    def similarity_map(self, crop: np.ndarray, phrase: str) -> np.ndarray:
        h, w = crop.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        return 1.0 - np.hypot(yy / max(h, 1) - 0.5, xx / max(w, 1) - 0.5)


class EllipseSegmenter:
    meaningless = True

    def set_image(self, crop: np.ndarray) -> Any:
        return crop.shape[:2]

    def _ellipse(self, state: Any) -> np.ndarray:
        h, w = state
        yy, xx = np.mgrid[0:h, 0:w]
        return ((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 <= 1.0

    def predict_points(self, state: Any, points: np.ndarray) -> np.ndarray:
        return self._ellipse(state)

    def predict_text(self, state: Any, phrase: str) -> np.ndarray:
        return self._ellipse(state)


def sleepy_pipeline() -> Any:
    from geoseg.pipeline import GeoSegPipeline

    spec = BackendSpec("sleepy")
    cfg = GeoSegConfig(profile="sleepy", grounder=spec, matcher=spec, segmenter=spec)
    return GeoSegPipeline(cfg, SleepyGrounder(), FlatMatcher(), EllipseSegmenter())
