"""Evaluation harness: run a GeoSeg pipeline over a benchmark, score every sample, cache results per model version.

Resumable: each sample's outcome is written (atomically) to ``<cache>/<model_version>/<sample>-<key>.json`` with the
predicted mask beside it as a 1-bit PNG; a rerun with the same model version reads those back instead of running
the model. ``key`` hashes the image bytes, the mask bytes and the query, so an edited sample is re-run.

A sample whose pipeline call raises is recorded with its error and scored as an empty prediction (so a crashing
configuration is not rewarded by dropping its hard samples). Per-sample metrics are the seven of
:func:`geoseg.metrics.segmentation_metrics`; aggregation is :func:`geoseg.metrics.aggregate_metrics` (mean of each
metric and cumulative IoU, overall, per domain, per level and per domain x level).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from geoseg.evaluation.bench import Benchmark, BenchSample
from geoseg.metrics import Confusion, SampleScore, aggregate_metrics, segmentation_metrics
from geoseg.types import ABLATIONS, GeoSegConfig, GeoSegResult

CACHE_FORMAT = 1


class PipelineLike(Protocol):
    """What the harness needs from :class:`geoseg.pipeline.GeoSegPipeline` (a subset of ``geoseg.protocols.Pipeline``:
    no ``run_batch``)."""

    model_version: str
    meaningless: bool

    def __call__(self, image: np.ndarray, query: str) -> GeoSegResult: ...


@dataclass(frozen=True)
class SampleOutcome:
    """One sample scored: metrics, confusion counts, what the pipeline did, how long it took, any error."""

    sample_id: str
    domain: str
    level: str
    query: str
    model_version: str
    metrics: Mapping[str, float]
    confusion: Confusion
    route: str
    phrase: str = ""
    seconds: float = 0.0
    timings: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    mask_file: str | None = None
    cached: bool = False

    @property
    def score(self) -> SampleScore:
        return SampleScore(self.metrics, self.confusion, {"domain": self.domain, "level": self.level})

    def to_json(self) -> dict[str, Any]:
        c = self.confusion
        return {
            "format": CACHE_FORMAT, "sample_id": self.sample_id, "domain": self.domain, "level": self.level,
            "query": self.query, "model_version": self.model_version, "metrics": dict(self.metrics),
            "confusion": {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}, "route": self.route,
            "phrase": self.phrase, "seconds": self.seconds, "timings": dict(self.timings), "error": self.error,
            "mask_file": self.mask_file,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SampleOutcome:
        if d.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache entry format {d.get('format')!r} is not {CACHE_FORMAT}")
        return cls(
            sample_id=d["sample_id"], domain=d["domain"], level=d["level"], query=d["query"],
            model_version=d["model_version"], metrics=dict(d["metrics"]), confusion=Confusion(**d["confusion"]),
            route=d["route"], phrase=d.get("phrase", ""), seconds=float(d.get("seconds", 0.0)),
            timings=dict(d.get("timings", {})), error=d.get("error"), mask_file=d.get("mask_file"), cached=True,
        )


@dataclass(frozen=True)
class EvalRun:
    """All outcomes of one model version on one benchmark."""

    benchmark: Benchmark
    model_version: str
    outcomes: tuple[SampleOutcome, ...]
    cache_dir: Path
    meaningless: bool = False
    label: str = "full"

    @property
    def scores(self) -> list[SampleScore]:
        return [o.score for o in self.outcomes]

    def aggregate(self) -> dict[tuple[Any, ...], dict[str, float]]:
        return aggregate_metrics(self.scores, by=("domain", "level"))

    @property
    def n_errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    @property
    def n_cached(self) -> int:
        return sum(1 for o in self.outcomes if o.cached)

    def seconds_per_sample(self) -> float:
        fresh = [o.seconds for o in self.outcomes if o.seconds > 0]
        return float(np.mean(fresh)) if fresh else 0.0

    def mean_timings(self) -> dict[str, float]:
        """Mean of each pipeline stage's time (seconds) over samples that report it."""
        acc: dict[str, list[float]] = {}
        for o in self.outcomes:
            for k, v in o.timings.items():
                acc.setdefault(k, []).append(float(v))
        return {k: float(np.mean(v)) for k, v in sorted(acc.items())}

    def mask_path(self, outcome: SampleOutcome) -> Path | None:
        return self.cache_dir / outcome.mask_file if outcome.mask_file else None

    def load_prediction(self, outcome: SampleOutcome) -> np.ndarray:
        p = self.mask_path(outcome)
        if p is None:
            s = self.sample(outcome.sample_id)
            return np.zeros((s.height, s.width), dtype=bool)
        return _read_mask_png(p)

    def sample(self, sample_id: str) -> BenchSample:
        for s in self.benchmark.samples:
            if s.id == sample_id:
                return s
        raise KeyError(sample_id)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "sample"


def sample_key(sample: BenchSample) -> str:
    """Hash of what defines a sample's outcome besides the model: image bytes, mask bytes, query."""
    h = hashlib.sha256()
    for p in (sample.image_path, sample.mask_path):
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    h.update(sample.query.encode("utf-8"))
    return h.hexdigest()[:16]


def _write_mask_png(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.asarray(mask, dtype=bool)).save(tmp, format="PNG")
    os.replace(tmp, path)


def _read_mask_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("1"), dtype=bool).copy()


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def score_prediction(pred: np.ndarray, gt: np.ndarray) -> tuple[dict[str, float], Confusion]:
    """The seven per-sample metrics and the confusion counts of one prediction."""
    return segmentation_metrics(pred, gt), Confusion.of(pred, gt)


def evaluate_sample(pipeline: PipelineLike, sample: BenchSample) -> tuple[SampleOutcome, np.ndarray]:
    """Run the pipeline on one sample and score it; an exception is recorded, never raised."""
    gt = sample.load_mask()
    image = sample.load_image()
    if image.shape[:2] != gt.shape:
        raise ValueError(f"sample {sample.id}: image {image.shape[:2]} and mask {gt.shape} differ in size")
    t0 = time.perf_counter()
    error = None
    route, phrase, timings = "empty", "", {}
    try:
        result = pipeline(image, sample.query)
        pred = np.asarray(result.mask, dtype=bool)
        if pred.shape != gt.shape:
            raise ValueError(f"pipeline returned a {pred.shape} mask for a {gt.shape} image")
        route, phrase, timings = result.route, result.grounding.phrase, dict(result.timings)
    except Exception as exc:  # recorded per sample; the run goes on
        error = f"{type(exc).__name__}: {exc}"
        pred = np.zeros_like(gt)
    seconds = time.perf_counter() - t0
    metrics, conf = score_prediction(pred, gt)
    outcome = SampleOutcome(
        sample_id=sample.id, domain=sample.domain, level=sample.level, query=sample.query,
        model_version=pipeline.model_version, metrics=metrics, confusion=conf, route=route, phrase=phrase,
        seconds=seconds, timings=timings, error=error,
    )
    return outcome, pred


def iter_evaluate(
    pipeline: PipelineLike, benchmark: Benchmark, cache_root: Path, *, rerun_errors: bool = False
) -> Iterator[SampleOutcome]:
    """Yield one outcome per sample, from the cache when present, else by running the pipeline (then cached)."""
    version_dir = Path(cache_root) / _safe(pipeline.model_version)
    (version_dir / "masks").mkdir(parents=True, exist_ok=True)
    loaded = False
    for sample in benchmark.samples:
        stem = f"{_safe(sample.id)}-{sample_key(sample)}"
        entry = version_dir / f"{stem}.json"
        if entry.is_file():
            try:
                cached = SampleOutcome.from_json(json.loads(entry.read_text()))
                mask_ok = cached.mask_file is None or (version_dir / cached.mask_file).is_file()
                if mask_ok and not (rerun_errors and cached.error):
                    yield cached
                    continue
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                pass  # a torn or old entry: run the sample again and overwrite it
        if not loaded and hasattr(pipeline, "load"):
            pipeline.load()  # build the models before the first timed sample: load time is not inference time
        loaded = True
        outcome, pred = evaluate_sample(pipeline, sample)
        mask_file = None
        if outcome.error is None:
            mask_file = f"masks/{stem}.png"
            _write_mask_png(pred, version_dir / mask_file)
        outcome = replace(outcome, mask_file=mask_file)
        _write_json_atomic(outcome.to_json(), entry)
        yield outcome


def evaluate(
    pipeline: PipelineLike,
    benchmark: Benchmark,
    cache_root: Path,
    *,
    label: str = "full",
    progress: Callable[[int, int, SampleOutcome], None] | None = None,
    rerun_errors: bool = False,
) -> EvalRun:
    """Evaluate ``pipeline`` on every sample of ``benchmark`` (resumable through ``cache_root``)."""
    outcomes: list[SampleOutcome] = []
    total = len(benchmark.samples)
    for i, o in enumerate(iter_evaluate(pipeline, benchmark, cache_root, rerun_errors=rerun_errors), 1):
        outcomes.append(o)
        if progress:
            progress(i, total, o)
    return EvalRun(
        benchmark=benchmark, model_version=pipeline.model_version, outcomes=tuple(outcomes),
        cache_dir=Path(cache_root) / _safe(pipeline.model_version),
        meaningless=pipeline.meaningless, label=label,
    )


def evaluate_ablations(
    make_pipeline: Callable[[GeoSegConfig], PipelineLike],
    config: GeoSegConfig,
    benchmark: Benchmark,
    cache_root: Path,
    *,
    names: Sequence[str] = tuple(ABLATIONS),
    progress: Callable[[str, int, int, SampleOutcome], None] | None = None,
) -> dict[str, EvalRun]:
    """The paper's Table 3: one run per ablation (full, no_refine, no_route_a, no_route_b), each cached apart.

    ``make_pipeline`` builds a pipeline for a config; it should reuse loaded models across calls.
    """
    runs: dict[str, EvalRun] = {}
    for name in names:
        pipe = make_pipeline(config.ablation(name))
        cb = (lambda i, n, o, _name=name: progress(_name, i, n, o)) if progress else None
        runs[name] = evaluate(pipe, benchmark, cache_root, label=name, progress=cb)
    return runs


def outcomes_table(outcomes: Iterable[SampleOutcome]) -> list[dict[str, Any]]:
    """Flat rows (one per sample) for CSV output."""
    rows = []
    for o in outcomes:
        row: dict[str, Any] = {
            "sample_id": o.sample_id, "domain": o.domain, "level": o.level, "model_version": o.model_version,
            "route": o.route, "phrase": o.phrase, "seconds": round(o.seconds, 6), "error": o.error or "",
            "query": o.query,
        }
        row.update({k: round(float(v), 6) for k, v in o.metrics.items()})
        row.update({"tp": o.confusion.tp, "fp": o.confusion.fp, "fn": o.confusion.fn, "tn": o.confusion.tn})
        rows.append(row)
    return rows
