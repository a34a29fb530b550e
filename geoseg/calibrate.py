"""Calibrating the pipeline's parameters to accepted annotations (``geolabel calibrate``): pure fitting.

The GeoSeg paper fixes alpha, beta (Eq. 2), gamma (Eq. 6), tau and k (Eq. 3) by hand and names fitting them from data
as future work. Given accepted masks and what the pipeline stored for the same items, this module fits:

* **alpha, beta** from (raw grounder box b, accepted mask M) pairs: per side, the signed shortfall of b against the
  tight box of M, as a share of b's width (left, right) or height (top, bottom) -- :func:`side_shifts`. Eq. 2 expands
  the left/top sides by alpha and the right/bottom sides by beta, so alpha = max(0, median of the left and top
  shortfalls), beta = max(0, median of the right and bottom shortfalls): the median expansion that makes the refined
  box reach the mask's extent (robust to a few wild boxes). Intervals: percentile bootstrap over samples.
* **gamma** exactly, offline: validity (Eq. 6) only flips where gamma crosses a route mask's area share of the RoI,
  so re-fusing (Eq. 7) the stored route masks at every such breakpoint finds the gamma with the best mean IoU against
  the accepted masks over all of [0, 1] (:func:`fit_gamma`). Single-box predictions only (their route masks and RoI
  are exact; a multi-box prediction stores unions).
* **tau, k** (and the segmenter's ``text_score_threshold`` where its backend has one) by re-running stages 2-3 with
  the stored groundings (no grounder call) through the evaluation harness and its per-model-version cache, a
  coordinate search over bounded grids under a time budget (:func:`search_stage23`).

Everything is fitted on the ``fit`` split; IoU of pre-labels against accepted masks before (the stored pre-labels)
and after (stages 2-3 re-run with the calibrated parameters) is reported on the ``held-out`` split, per domain x
level. Below ``min_samples`` usable pairs it refuses (:class:`CalibrationError`). With tiny random models the masks
and every IoU are meaningless (only the box fit, which needs no model, means something then).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.evaluation.bench import Benchmark, BenchSample
from geoseg.masks import fuse_masks, validity
from geoseg.metrics import Confusion
from geoseg.types import Box, GeoSegConfig, GeoSegResult, Grounding

SIDES = ("left", "top", "right", "bottom")
DEFAULT_MIN_SAMPLES = 20
TAU_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
K_GRID = (1, 2, 3, 5, 8)
TEXT_SCORE_GRID = (0.0, 0.1, 0.3, 0.5)


class CalibrationError(ValueError):
    """Calibration cannot run (too few samples, nothing stored to fit from); the message says what is missing."""


@dataclass(frozen=True, eq=False)
class CalibrationSample:
    """One accepted item: the benchmark sample (image, query, accepted mask) and what the pipeline stored for it."""

    sample: BenchSample
    grounding: Grounding | None = None  # the stored raw grounder output (boxes, phrase)
    prelabel: np.ndarray | None = None  # the stored fused mask (the pre-label the annotator saw)
    mask_point: np.ndarray | None = None
    mask_text: np.ndarray | None = None
    roi: tuple[int, int, int, int] | None = None
    accepted: np.ndarray | None = None  # loaded from sample.mask_path when None

    def gt(self) -> np.ndarray:
        return self.accepted if self.accepted is not None else self.sample.load_mask()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    c = Confusion.of(a, b)
    return 1.0 if c.union == 0 else c.intersection / c.union


def tight_box(mask: np.ndarray) -> Box | None:
    """The pixel-edge box of a mask's foreground ((min col, min row, max col + 1, max row + 1)), None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def side_shifts(b: Box, mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """(left, top, right, bottom) shortfall of box ``b`` against the mask's tight box, as shares of b's width/height:
    positive = the box must grow on that side to reach the mask. None for an empty mask or a degenerate box."""
    t = tight_box(mask)
    if t is None or b.width <= 0 or b.height <= 0:
        return None
    return ((b.x1 - t.x1) / b.width, (b.y1 - t.y1) / b.height, (t.x2 - b.x2) / b.width, (t.y2 - b.y2) / b.height)


@dataclass(frozen=True)
class Fitted:
    """A fitted value with its percentile-bootstrap interval (None where not fitted) and the sample count."""

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0

    def row(self) -> dict[str, Any]:
        r = {"value": self.value, "low": self.low, "high": self.high, "n": self.n}
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}


def bootstrap(values: np.ndarray, stat: Callable[[np.ndarray], float], *, n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> Fitted:  # fmt: skip
    """``stat`` of the rows of ``values`` and its percentile-bootstrap interval."""
    values = np.asarray(values)
    if len(values) == 0:
        return Fitted(None)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.array([stat(values[i]) for i in idx])
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Fitted(float(stat(values)), float(lo), float(hi), len(values))


def _alpha(sh: np.ndarray) -> float:
    return max(0.0, float(np.median(sh[:, [0, 1]])))


def _beta(sh: np.ndarray) -> float:
    return max(0.0, float(np.median(sh[:, [2, 3]])))


def fit_box_margins(samples: Sequence[CalibrationSample], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Fitted]:
    """alpha, beta and the median shortfall per side from (first raw box, accepted mask) pairs."""
    rows = []
    for s in samples:
        if s.grounding is None or not s.grounding.boxes:
            continue
        sh = side_shifts(s.grounding.boxes[0], s.gt())
        if sh is not None:
            rows.append(sh)
    sh = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    out = {side: bootstrap(sh[:, i], lambda v: float(np.median(v)), n_boot=n_boot, seed=seed + i)
           for i, side in enumerate(SIDES)}  # fmt: skip
    out["alpha"] = bootstrap(sh, _alpha, n_boot=n_boot, seed=seed + 10)
    out["beta"] = bootstrap(sh, _beta, n_boot=n_boot, seed=seed + 11)
    return out


def _route_share(mask: np.ndarray | None, roi: tuple[int, int, int, int]) -> float | None:
    if mask is None:
        return None
    X1, Y1, X2, Y2 = roi
    area = (X2 - X1) * (Y2 - Y1)
    return np.count_nonzero(mask) / area if area > 0 else None


def refuse_iou(s: CalibrationSample, gamma: float) -> float:
    """IoU against the accepted mask of the stored route masks re-fused (Eq. 6, 7) at ``gamma``."""
    assert s.roi is not None
    v_pt = s.mask_point is not None and validity(s.mask_point, s.roi, gamma)
    v_txt = s.mask_text is not None and validity(s.mask_text, s.roi, gamma)
    fused, _ = fuse_masks(s.mask_point, s.mask_text, v_pt, v_txt)
    return iou(fused, s.gt())


def gamma_samples(samples: Sequence[CalibrationSample]) -> list[CalibrationSample]:
    return [s for s in samples if s.roi is not None and (s.mask_point is not None or s.mask_text is not None)
            and s.grounding is not None and len(s.grounding.boxes) == 1]  # fmt: skip


def fit_gamma(samples: Sequence[CalibrationSample], *, n_boot: int = 200, seed: int = 0) -> tuple[Fitted, dict]:
    """The gamma in [0, 1] with the best mean re-fused IoU (exact: every breakpoint is tried; ties -> smallest).

    Returns the fit (interval: the best gamma over bootstrap resamples of the samples) and the IoU table
    ``{"grid": [...], "mean_iou": [...]}``.
    """
    usable = gamma_samples(samples)
    if not usable:
        return Fitted(None), {"grid": [], "mean_iou": []}
    shares = {0.0}
    for s in usable:
        for m in (s.mask_point, s.mask_text):
            share = _route_share(m, s.roi)  # type: ignore[arg-type]
            if share is not None and share <= 1.0:
                shares.add(float(share))
    grid = sorted(shares)
    table = np.array([[refuse_iou(s, g) for g in grid] for s in usable])  # samples x grid
    means = table.mean(axis=0)

    def best(rows: np.ndarray) -> float:
        m = rows.mean(axis=0)
        return grid[int(np.flatnonzero(m >= m.max() - 1e-12)[0])]

    fit = bootstrap(table, best, n_boot=n_boot, seed=seed)
    return fit, {"grid": grid, "mean_iou": [float(x) for x in means]}


class StoredGroundingPipeline:
    """Stages 2-3 of a pipeline on stored groundings: ``__call__(image, query)`` looks the grounding up by image
    content and query and calls ``pipeline.segment`` (no grounder call). A harness ``PipelineLike``."""

    def __init__(self, pipeline: Any, groundings: Mapping[str, Grounding]) -> None:
        self.pipeline = pipeline
        self.groundings = dict(groundings)
        self.model_version = f"{pipeline.model_version}-stored-grounding"
        self.meaningless = bool(pipeline.meaningless)

    @staticmethod
    def key(image: np.ndarray, query: str) -> str:
        h = hashlib.sha256(np.ascontiguousarray(image).tobytes())
        h.update(query.encode("utf-8"))
        return h.hexdigest()

    def load(self) -> None:
        if hasattr(self.pipeline, "load"):
            self.pipeline.load()

    def __call__(self, image: np.ndarray, query: str) -> GeoSegResult:
        g = self.groundings.get(self.key(image, query))
        if g is None:
            raise LookupError("no stored grounding for this image and query")
        return self.pipeline.segment(image, query, g)


def _mean_iou(outcomes: Sequence[Any]) -> float:
    return float(np.mean([o.metrics["iou"] for o in outcomes])) if outcomes else 0.0


@dataclass
class Stage23Search:
    best: dict[str, Any]
    best_iou: float
    tried: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_budget: bool = False
    skipped: list[str] = field(default_factory=list)


def _groundings(samples: Sequence[CalibrationSample]) -> dict[str, Grounding]:
    out = {}
    for s in samples:
        if s.grounding is not None:
            out[StoredGroundingPipeline.key(s.sample.load_image(), s.sample.query)] = s.grounding
    return out


def evaluate_stage23(
    build: Callable[[GeoSegConfig], Any], config: GeoSegConfig, samples: Sequence[CalibrationSample],
    cache_root: Path, groundings: Mapping[str, Grounding] | None = None,
) -> list[Any]:
    """Harness outcomes (cached per model version under ``cache_root``) of stages 2-3 at ``config``."""
    from geoseg.evaluation.harness import iter_evaluate

    bench = Benchmark("calibration", Path(cache_root), "calibration", tuple(s.sample for s in samples))
    pipe = StoredGroundingPipeline(build(config), groundings if groundings is not None else _groundings(samples))
    return list(iter_evaluate(pipe, bench, Path(cache_root)))


def _with_text_score(config: GeoSegConfig, value: float) -> GeoSegConfig:
    seg = config.segmenter
    return replace(config, segmenter=replace(seg, options={**dict(seg.options), "text_score_threshold": value}))


def search_stage23(
    build: Callable[[GeoSegConfig], Any],
    config: GeoSegConfig,
    samples: Sequence[CalibrationSample],
    cache_root: Path,
    *,
    tau_grid: Sequence[float] = TAU_GRID,
    k_grid: Sequence[int] = K_GRID,
    text_score_grid: Sequence[float] | None = TEXT_SCORE_GRID,
    budget_s: float = 300.0,
    rounds: int = 2,
) -> Stage23Search:
    """Coordinate search of tau, then k, then the text-score threshold (``rounds`` passes), each point scored by
    the mean IoU of stages 2-3 re-run on ``samples``; stops when ``budget_s`` is spent (the best so far stands)."""
    t0 = time.monotonic()
    groundings = _groundings(samples)
    seen: dict[tuple, float] = {}
    cur = {"tau": config.tau, "k": config.k, "text_score_threshold": None}
    search = Stage23Search(best=dict(cur), best_iou=-1.0)

    def cfg_of(p: dict[str, Any]) -> GeoSegConfig:
        c = replace(config, tau=float(p["tau"]), k=int(p["k"]))
        return _with_text_score(c, float(p["text_score_threshold"])) if p["text_score_threshold"] is not None else c

    def score(p: dict[str, Any]) -> float | None:
        key = (p["tau"], p["k"], p["text_score_threshold"])
        if key not in seen:
            if time.monotonic() - t0 > budget_s:
                search.stopped_by_budget = True
                return None
            try:
                seen[key] = _mean_iou(evaluate_stage23(build, cfg_of(p), samples, cache_root, groundings))
            except (TypeError, ValueError) as exc:  # e.g. a segmenter backend without that option
                search.skipped.append(f"{key}: {exc}")
                return None
            search.tried.append({**p, "mean_iou": seen[key]})
        return seen[key]

    s0 = score(cur)
    search.best_iou = s0 if s0 is not None else -1.0
    dims: list[tuple[str, Sequence[Any]]] = [("tau", tau_grid), ("k", k_grid)]
    if text_score_grid:
        dims.append(("text_score_threshold", text_score_grid))
    for _ in range(rounds):
        for name, grid in dims:
            for value in grid:
                cand = {**search.best, name: value}
                sc = score(cand)
                if sc is not None and sc > search.best_iou + 1e-12:
                    search.best, search.best_iou = cand, sc
                if search.stopped_by_budget:
                    return search
    return search


def split_of(sample_id: str, holdout: float, seed: int = 0) -> str:
    """Deterministic split by a hash of the sample id: ``held-out`` for a ``holdout`` share, else ``fit``."""
    h = int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "held-out" if h < holdout else "fit"


def _per_stratum(samples: Sequence[CalibrationSample], ious: Sequence[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for s, v in zip(samples, ious, strict=True):
        groups.setdefault(f"{s.sample.domain} x {s.sample.level}", []).append(v)
        groups.setdefault("all", []).append(v)
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(groups.items())}


@dataclass
class CalibrationReport:
    base_model_version: str
    n_samples: int
    n_fit: int
    n_held_out: int
    fitted: dict[str, dict[str, Any]]
    config: GeoSegConfig
    before: dict[str, float]
    after: dict[str, float]
    search: dict[str, Any]
    gamma_table: dict[str, Any]
    meaningless: bool
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "base_model_version": self.base_model_version, "model_version": self.config.model_version,
            "n_samples": self.n_samples, "n_fit": self.n_fit, "n_held_out": self.n_held_out,
            "fitted": self.fitted, "parameters": {k: getattr(self.config, k) for k in ("alpha", "beta", "gamma",
                                                                                      "tau", "k")},
            "iou_held_out": {"before": self.before, "after": self.after}, "search": self.search,
            "gamma_table": self.gamma_table, "meaningless": self.meaningless, "notes": self.notes,
        }  # fmt: skip


def calibrate(
    samples: Sequence[CalibrationSample],
    config: GeoSegConfig,
    build: Callable[[GeoSegConfig], Any] | None,
    cache_root: Path,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    holdout: float = 0.3,
    seed: int = 0,
    n_boot: int = 1000,
    budget_s: float = 300.0,
    text_score_grid: Sequence[float] | None = TEXT_SCORE_GRID,
    meaningless: bool = False,
) -> CalibrationReport:
    """Fit alpha, beta, gamma (on the fit split), search tau, k (and the text-score threshold) by re-running stages
    2-3 on the fit split, and report IoU before/after on the held-out split. ``build`` makes a pipeline from a config
    (None: no re-running; tau/k stay and "after" is not measured). Raises CalibrationError below ``min_samples``."""
    usable = [s for s in samples if s.grounding is not None and s.grounding.boxes]
    if len(usable) < min_samples:
        raise CalibrationError(
            f"calibration needs at least {min_samples} accepted items with a stored grounder box, found {len(usable)} "
            f"(of {len(samples)}): annotate more, or lower --min-samples at the price of wide intervals"
        )
    fit = [s for s in usable if split_of(s.sample.id, holdout, seed) == "fit"]
    held = [s for s in usable if split_of(s.sample.id, holdout, seed) == "held-out"]
    notes: list[str] = []
    margins = fit_box_margins(fit, n_boot=n_boot, seed=seed)
    gamma_fit, gamma_table = fit_gamma(fit, seed=seed)
    a_fit, b_fit = margins["alpha"].value, margins["beta"].value
    new = replace(config, alpha=round(config.alpha if a_fit is None else a_fit, 4),
                  beta=round(config.beta if b_fit is None else b_fit, 4))
    if gamma_fit.value is not None:
        new = replace(new, gamma=round(float(gamma_fit.value), 6))
    else:
        notes.append("gamma not fitted: no single-box prediction with stored route masks (predict again to store them)")
    search: dict[str, Any] = {}
    if build is not None:
        res = search_stage23(build, new, fit, Path(cache_root), text_score_grid=text_score_grid, budget_s=budget_s)
        new = replace(new, tau=float(res.best["tau"]), k=int(res.best["k"]))
        if res.best.get("text_score_threshold") is not None:
            new = _with_text_score(new, float(res.best["text_score_threshold"]))
        search = {"best": res.best, "best_mean_iou_fit": res.best_iou, "tried": res.tried,
                  "stopped_by_budget": res.stopped_by_budget, "skipped": res.skipped[:5]}  # fmt: skip
        if res.stopped_by_budget:
            notes.append(f"tau/k search stopped by its {budget_s:.0f} s budget after {len(res.tried)} points")
    else:
        notes.append("tau/k not searched: no pipeline to re-run stages 2-3")
    before = _per_stratum(held, [iou(s.prelabel, s.gt()) if s.prelabel is not None else 0.0 for s in held]) \
        if held else {}
    after: dict[str, float] = {}
    if build is not None and held:
        outs = {o.sample_id: o.metrics["iou"] for o in evaluate_stage23(build, new, held, Path(cache_root))}
        after = _per_stratum(held, [outs[s.sample.id] for s in held])
    if not held:
        notes.append("no held-out sample: raise --holdout or add samples")
    if meaningless:
        notes.append("tiny random models: every mask and IoU here is meaningless; only the box fit means something")
    fitted = {k: v.row() for k, v in margins.items()} | {"gamma": gamma_fit.row()}
    fitted["tau"] = {"value": new.tau}
    fitted["k"] = {"value": new.k}
    return CalibrationReport(
        base_model_version=config.model_version, n_samples=len(usable), n_fit=len(fit), n_held_out=len(held),
        fitted=fitted, config=new, before=before, after=after, search=search, gamma_table=gamma_table,
        meaningless=meaningless, notes=notes,
    )


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if not (isinstance(v, float) and math.isnan(v)) else "nan"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_text(report: CalibrationReport, extends: str, profile: str) -> str:
    """A TOML profile that ``extends`` the current one with the calibrated values (a new model version)."""
    c = report.config
    lines = [
        f"# geolabel calibrate: fitted on {report.n_fit} accepted items, held-out {report.n_held_out};",
        f"# base model version {report.base_model_version}; report beside this file (.report.json)",
        f"extends = {_toml_value(extends)}",
        f"profile = {_toml_value(profile)}",
        *(f"{k} = {_toml_value(getattr(c, k))}" for k in ("alpha", "beta", "gamma", "tau", "k")),
    ]
    tst = dict(c.segmenter.options).get("text_score_threshold")
    if tst is not None:
        lines += ["[segmenter]", f"options = {{ text_score_threshold = {_toml_value(float(tst))} }}"]
    return "\n".join(lines) + "\n"


def sample_from_stored(
    sample: BenchSample, stored: Mapping[str, Any], masks: Mapping[str, np.ndarray | None]
) -> CalibrationSample:
    """A calibration sample from a benchmark sample, the stored prediction's fields (``boxes``, ``phrase``,
    ``refined_box``) and its decoded masks (``mask``, ``mask_point``, ``mask_text``; None where not stored)."""
    from geoseg.box import roi_from_box

    boxes = tuple(Box.from_sequence(b) for b in stored.get("boxes") or [])
    refined = stored.get("refined_box")
    roi = roi_from_box(Box.from_sequence(refined)) if refined else None
    return CalibrationSample(
        sample=sample, grounding=Grounding(boxes=boxes, phrase=str(stored.get("phrase") or "")) if boxes else None,
        prelabel=masks.get("mask"), mask_point=masks.get("mask_point"), mask_text=masks.get("mask_text"), roi=roi,
    )
