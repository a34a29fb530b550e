"""Typed records passed end to end through the GeoSeg pipeline.

Everything here is a frozen dataclass validated on construction, so that a bad value (a NaN coordinate, an inverted
box, a negative threshold) fails loudly where it is made instead of producing a silently wrong mask later.

Coordinates are absolute pixels, floats, with the usual image convention: x grows to the right (columns), y grows
downwards (rows), and a box covers ``[x1, x2) x [y1, y2)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from geoseg.vocabulary import ROUTES, Route  # re-exported: the routes are part of the result type

#: Where Route A's point prompts come from: CLIP Surgery keypoints (paper), the grounder's positive points
#: (Think2Seg-RS; CLIP keypoints for a box without any), or both.
ROUTE_A_POINTS: tuple[str, ...] = ("clip", "grounder", "both")

#: The paper's Table 3 rows, as (name, switches) pairs.
ABLATIONS: dict[str, dict[str, bool]] = {
    "full": {"refine": True, "route_a": True, "route_b": True},
    "no_refine": {"refine": False, "route_a": True, "route_b": True},
    "no_route_a": {"refine": True, "route_a": False, "route_b": True},
    "no_route_b": {"refine": True, "route_a": True, "route_b": False},
}

TINY_MODEL_WARNING = (
    "masks come from tiny randomly initialised models: they exercise the real code path and mean nothing"
)


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``b = (x1, y1, x2, y2)`` in absolute pixel coordinates."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        for name in ("x1", "y1", "x2", "y2"):
            object.__setattr__(self, name, _finite(f"Box.{name}", getattr(self, name)))
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(
                f"inverted box: need x1 <= x2 and y1 <= y2, got ({self.x1}, {self.y1}, {self.x2}, {self.y2})"
            )

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @classmethod
    def from_sequence(cls, values: Any) -> Box:
        vals = list(values)
        if len(vals) != 4:
            raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(vals)}")
        return cls(*vals)


@dataclass(frozen=True)
class Grounding:
    """What the grounder 𝓛 returned for (image, query).

    ``boxes`` may hold several boxes (Think2Seg-RS form); an empty tuple means "no target" or "nothing parseable",
    and then ``error`` says which. ``points[i]`` are the positive points proposed for ``boxes[i]`` (may be empty).
    ``phrases[i]`` is the phrase the grounder gave ``boxes[i]`` (Think2Seg-RS lists label each box; empty when it
    gave none, or ``phrases`` empty altogether); ``phrase`` is the first non-empty one.
    ``raw_text`` is always the model's text as received, kept for audit.
    """

    boxes: tuple[Box, ...] = ()
    phrase: str = ""
    points: tuple[tuple[tuple[float, float], ...], ...] = ()
    raw_text: str = ""
    error: str | None = None
    phrases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", tuple(self.boxes))
        phrases = tuple(str(p) for p in self.phrases)
        if phrases and len(phrases) != len(self.boxes):
            raise ValueError(f"phrases must be given per box: {len(phrases)} phrases for {len(self.boxes)} boxes")
        object.__setattr__(self, "phrases", phrases)
        pts = tuple(tuple((_finite("point.x", p[0]), _finite("point.y", p[1])) for p in ps) for ps in self.points)
        if pts and len(pts) != len(self.boxes):
            raise ValueError(f"points must be given per box: {len(pts)} point lists for {len(self.boxes)} boxes")
        object.__setattr__(self, "points", pts)
        for b in self.boxes:
            if not isinstance(b, Box):
                raise ValueError(f"Grounding.boxes must hold Box values, got {type(b).__name__}")

    @property
    def box(self) -> Box | None:
        """The first (most confident) box, the one GeoSeg's single-box form uses."""
        return self.boxes[0] if self.boxes else None

    def phrase_of(self, i: int) -> str:
        """The phrase for box ``i``: its own when the grounder gave one, else ``phrase``."""
        own = self.phrases[i].strip() if i < len(self.phrases) else ""
        return own or self.phrase

    @property
    def no_target(self) -> bool:
        return not self.boxes


@dataclass(frozen=True)
class BackendSpec:
    """Which backend plays a model role and where its weights come from.

    ``kind`` names the backend (e.g. ``"transformers"``, ``"openai"``, ``"open_clip"``, ``"sam3-transformers"``);
    ``model`` is a hub id or a local directory; ``options`` are backend-specific keyword arguments (JSON-able).
    Secrets (API keys) are never stored here: options name the environment variable that holds them.
    """

    kind: str
    model: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind or not isinstance(self.kind, str):
            raise ValueError("BackendSpec.kind must be a non-empty string")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackendSpec:
        return cls(kind=d["kind"], model=d.get("model", ""), options=d.get("options", {}))


@dataclass(frozen=True)
class GeoSegConfig:
    """Hyper-parameters (paper defaults), ablation switches and backend specs."""

    alpha: float = 0.2
    beta: float = 0.1
    k: int = 5
    tau: float = 0.3
    gamma: float = 0.01
    nms_radius: float | None = None
    refine: bool = True
    route_a: bool = True
    route_b: bool = True
    route_a_points: str = "clip"
    profile: str = "tiny"
    grounder: BackendSpec = field(default_factory=lambda: BackendSpec("tiny"))
    matcher: BackendSpec = field(default_factory=lambda: BackendSpec("tiny"))
    segmenter: BackendSpec = field(default_factory=lambda: BackendSpec("tiny"))

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            if _finite(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        for name in ("tau", "gamma"):
            v = _finite(name, getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if self.nms_radius is not None and _finite("nms_radius", self.nms_radius) <= 0:
            raise ValueError(f"nms_radius must be > 0 when given, got {self.nms_radius}")
        if self.route_a_points not in ROUTE_A_POINTS:
            raise ValueError(f"route_a_points must be one of {list(ROUTE_A_POINTS)}, got {self.route_a_points!r}")
        if not (self.route_a or self.route_b):
            raise ValueError("at least one of route_a / route_b must be enabled")
        for name in ("grounder", "matcher", "segmenter"):
            spec = getattr(self, name)
            if isinstance(spec, Mapping):
                object.__setattr__(self, name, BackendSpec.from_dict(spec))
            elif not isinstance(spec, BackendSpec):
                raise ValueError(f"{name} must be a BackendSpec, got {type(spec).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("grounder", "matcher", "segmenter"):
            d[name] = getattr(self, name).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeoSegConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GeoSegConfig keys: {sorted(unknown)}")
        return cls(**dict(d))

    @property
    def model_version(self) -> str:
        """A stable hash of everything that changes the output (hyper-parameters, switches, backends)."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return f"geoseg-{self.profile}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def ablation(self, name: str) -> GeoSegConfig:
        """The config for one of the paper's Table 3 rows: full, no_refine, no_route_a, no_route_b."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
        return replace(self, **ABLATIONS[name])


@dataclass(frozen=True)
class BoxOutcome:
    """Stages 2-3 for one grounded box, as scalars (the masks themselves are in the result's per-route unions).

    ``iou_routes`` is IoU(Route A mask, Route B mask) when both routes ran on this box; ``margin_point`` /
    ``margin_text`` are the validity margins (``geoseg.masks.validity_margin``: 0 at the gamma threshold or below, 1
    for a mask filling the RoI) of the routes that ran, None for a route that did not run or found no keypoint.
    """

    index: int
    route: Route
    iou_routes: float | None = None
    margin_point: float | None = None
    margin_text: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        for name in ("iou_routes", "margin_point", "margin_text"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= _finite(name, v) <= 1.0:
                raise ValueError(f"BoxOutcome.{name} must lie in [0, 1], got {v}")

    @property
    def score(self) -> float:
        """This box's confidence in [0, 1] (see :attr:`GeoSegResult.score`)."""
        if self.route == "intersection":
            return 0.5 + 0.5 * (1.0 if self.iou_routes is None else float(self.iou_routes))
        if self.route in ("point", "text"):
            margin = self.margin_point if self.route == "point" else self.margin_text
            return 0.25 + 0.25 * (0.5 if margin is None else float(margin))
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class GeoSegResult:
    """Everything the pipeline decided for one (image, query).

    ``mask`` is the final (H, W) bool mask at full image resolution. Route masks are full resolution too, or None
    when the route was switched off or never ran. ``keypoints`` are Route A's prompts in full-image pixel coordinates,
    shape (k', 2) as (x, y). ``reason`` explains an empty result (no box, box outside the image, both routes invalid).
    """

    mask: np.ndarray
    route: Route
    grounding: Grounding
    model_version: str
    box: Box | None = None
    refined_box: Box | None = None
    roi: tuple[int, int, int, int] | None = None
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    mask_point: np.ndarray | None = None
    mask_text: np.ndarray | None = None
    valid_point: bool = False
    valid_text: bool = False
    timings: Mapping[str, float] = field(default_factory=dict)
    reason: str | None = None
    note: str | None = None
    per_box: tuple[BoxOutcome, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_box", tuple(self.per_box))
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        m = np.asarray(self.mask)
        if m.ndim != 2 or m.dtype != np.bool_:
            raise ValueError(f"mask must be a 2-D bool array, got shape {m.shape} dtype {m.dtype}")
        for name in ("mask_point", "mask_text"):
            other = getattr(self, name)
            if other is not None and np.asarray(other).shape != m.shape:
                raise ValueError(f"{name} shape {np.asarray(other).shape} differs from mask shape {m.shape}")
        kp = np.asarray(self.keypoints, dtype=np.float64).reshape(-1, 2)
        object.__setattr__(self, "keypoints", kp)
        object.__setattr__(self, "timings", dict(self.timings))

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def score(self) -> float:
        """The pre-label confidence in [0, 1], higher = more confident (shown in Label Studio, stored per prediction).

        GeoSeg outputs no probability; its two routes give a free uncertainty signal instead. Per box (``per_box``):

        * both routes valid (Eq. 7 intersection): ``0.5 + 0.5 * IoU(M_A, M_B)``: in [0.5, 1], 1 when the point
          route and the text route drew the same mask, 0.5 when they only just overlap;
        * one valid route (point or text): ``0.25 + 0.25 * margin``, in [0.25, 0.5], where ``margin`` is that
          route's validity margin (``geoseg.masks.validity_margin``: how far the mask area clears gamma, on a log
          scale, 0 at the threshold, 1 for a mask filling the RoI);
        * no valid route: 0.

        The result's score is the mean over its boxes divided by sqrt(number of boxes): the prompt asks for one
        target, so several boxes are themselves a sign of doubt (and an empty box among them pulls the mean down).
        No box at all: 0. A result built without ``per_box`` (by hand, by a double) is scored as one box from its
        route masks, with an unknown margin taken as 0.5. Not calibrated (see issue 17 / ``geoseg.calibrate``).
        """
        if self.route == "empty":
            return 0.0
        parts = self.per_box or (self._as_one_box(),)
        n = len(parts)
        return float(min(1.0, max(0.0, sum(p.score for p in parts) / n / math.sqrt(n))))

    def _as_one_box(self) -> BoxOutcome:
        iou = None
        if self.route == "intersection" and self.mask_point is not None and self.mask_text is not None:
            from geoseg.metrics import mask_iou

            iou = mask_iou(self.mask_point, self.mask_text)
        return BoxOutcome(0, self.route, iou_routes=iou)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (no pixel arrays)."""
        return {
            "route": self.route,
            "model_version": self.model_version,
            "phrase": self.grounding.phrase,
            "boxes": [b.as_tuple() for b in self.grounding.boxes],
            "box": self.box.as_tuple() if self.box else None,
            "refined_box": self.refined_box.as_tuple() if self.refined_box else None,
            "roi": list(self.roi) if self.roi else None,
            "keypoints": self.keypoints.tolist(),
            "valid_point": self.valid_point,
            "valid_text": self.valid_text,
            "mask_area": self.area,
            "mask_shape": list(self.mask.shape),
            "timings_ms": {k: round(v * 1000.0, 3) for k, v in self.timings.items()},
            "reason": self.reason,
            "note": self.note,
            "score": round(self.score, 4),
            "per_box": [p.to_dict() for p in self.per_box],
            "raw_text": self.grounding.raw_text,
        }
