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
    ``raw_text`` is always the model's text as received, kept for audit.
    """

    boxes: tuple[Box, ...] = ()
    phrase: str = ""
    points: tuple[tuple[tuple[float, float], ...], ...] = ()
    raw_text: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", tuple(self.boxes))
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

    def __post_init__(self) -> None:
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
            "raw_text": self.grounding.raw_text,
        }
