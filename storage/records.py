"""Frozen records of the repository layer: what a flow hands to :mod:`storage.repo` to upsert (write records), and
the plain work lists some queries return (read records).

Write records validate on construction (clear ``ValueError`` on a bad value) and carry plain JSON-able values, so a
record built in a flow can be logged, retried or sent to a worker unchanged. Read records (:class:`ImageWork`,
:class:`WorkItem`) are plain values read once in a session, safe to hand to a Prefect task after it closed; other
queries return ORM rows (:mod:`storage.models`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from geoseg.vocabulary import ROUTES, normalise_domain, normalise_level, normalise_query, query_key
from storage.models import Verdict

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
#: Longer queries are refused (a unique index on PostgreSQL holds at most ~2.7 kB per key).
MAX_QUERY_CHARS = 1000


def _sha(name: str, value: str | None, required: bool = False) -> None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return
    if not isinstance(value, str) or not _SHA_RE.match(value):
        raise ValueError(f"{name} must be a sha256 hex digest (64 lowercase hex characters), got {value!r}")


def _pos_int(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _aware(name: str, value: Any) -> None:
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")


def _max_len(name: str, value: str | None, n: int) -> None:
    if value is not None and len(str(value)) > n:
        raise ValueError(f"{name} is longer than {n} characters: {str(value)[:60]!r}...")


def _floats(name: str, values: Any, n: int | None = None) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if n is not None and len(out) != n:
        raise ValueError(f"{name} must have {n} numbers, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _box(name: str, b: Any) -> list[float] | None:
    if b is None:
        return None
    if hasattr(b, "as_tuple"):
        b = b.as_tuple()
    return _floats(name, b, 4)


@dataclass(frozen=True)
class ImageRecord:
    sha256: str
    uri: str
    width: int
    height: int
    bands: int = 3
    dtype: str = "uint8"
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    format: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        _sha("ImageRecord.sha256", self.sha256, required=True)
        if not self.uri or not isinstance(self.uri, str):
            raise ValueError("ImageRecord.uri must be a non-empty string")
        for n in ("width", "height", "bands"):
            _pos_int(f"ImageRecord.{n}", getattr(self, n))
        _max_len("ImageRecord.dtype", self.dtype, 16)
        _max_len("ImageRecord.format", self.format, 32)
        if self.transform is not None:
            object.__setattr__(self, "transform", tuple(_floats("ImageRecord.transform", self.transform, 6)))

    @classmethod
    def from_loaded(cls, loaded: Any, sha256: str, uri: str, source: str | None = None) -> ImageRecord:
        """From a ``geoseg.imagery.LoadedImage`` (duck-typed: width, height, bands, dtype, crs, transform, format)."""
        return cls(
            sha256=sha256,
            uri=uri,
            width=int(loaded.width),
            height=int(loaded.height),
            bands=int(loaded.bands),
            dtype=str(loaded.dtype),
            crs=loaded.crs,
            transform=loaded.transform,
            format=getattr(loaded, "format", None),
            source=source,
        )

    def row(self) -> dict[str, Any]:
        d = _plain(self)
        d["transform"] = list(self.transform) if self.transform is not None else None
        return d


@dataclass(frozen=True)
class ItemRecord:
    """An (image, query) item. The query is stored normalised (``geoseg.vocabulary.normalise_query``); its identity on
    the image is :attr:`query_key` (normalised and case-folded), the key ``repo.upsert_items`` merges on."""

    image_id: int
    query: str
    level: str | None = None
    domain: str | None = None

    def __post_init__(self) -> None:
        _pos_int("ItemRecord.image_id", self.image_id)
        if not isinstance(self.query, str) or not normalise_query(self.query):
            raise ValueError("ItemRecord.query must be a non-empty string")
        object.__setattr__(self, "query", normalise_query(self.query))
        _max_len("ItemRecord.query", self.query, MAX_QUERY_CHARS)
        try:
            object.__setattr__(self, "level", normalise_level(self.level))
        except ValueError as exc:
            raise ValueError(f"ItemRecord.{exc}") from None
        if self.domain is not None and len(str(self.domain).strip()) > 64:
            raise ValueError(f"ItemRecord.domain is longer than 64 characters: {str(self.domain).strip()[:70]!r}")
        try:
            object.__setattr__(self, "domain", normalise_domain(self.domain))
        except ValueError as exc:
            raise ValueError(f"ItemRecord.{exc}") from None

    @property
    def query_key(self) -> str:
        return query_key(self.query)

    def row(self) -> dict[str, Any]:
        return {**_plain(self), "query_key": self.query_key}


@dataclass(frozen=True)
class PredictionRecord:
    item_id: int
    model_version: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None
    refined_box: tuple[float, float, float, float] | None = None
    phrase: str | None = None
    keypoints: tuple[tuple[float, float], ...] = ()
    route: str | None = None
    valid_point: bool | None = None
    valid_text: bool | None = None
    mask_sha256: str | None = None
    mask_area: int | None = None
    score: float | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    raw_text: str | None = None
    reason: str | None = None
    error: str | None = None
    point_mask_sha256: str | None = None  # Route A's mask before fusion (for calibrating gamma offline)
    text_mask_sha256: str | None = None  # Route B's mask before fusion

    def __post_init__(self) -> None:
        _pos_int("PredictionRecord.item_id", self.item_id)
        if not self.model_version or len(self.model_version) > 128:
            raise ValueError(f"PredictionRecord.model_version must be 1-128 characters, got {self.model_version!r}")
        object.__setattr__(self, "boxes", tuple(tuple(_box("PredictionRecord.boxes[]", b)) for b in self.boxes))
        for n in ("box", "refined_box"):
            b = _box(f"PredictionRecord.{n}", getattr(self, n))
            object.__setattr__(self, n, tuple(b) if b is not None else None)
        kps = tuple(tuple(_floats("PredictionRecord.keypoints[]", p, 2)) for p in self.keypoints)
        object.__setattr__(self, "keypoints", kps)
        if self.route is not None and self.route not in ROUTES:
            raise ValueError(f"PredictionRecord.route must be one of {ROUTES}, got {self.route!r}")
        _sha("PredictionRecord.mask_sha256", self.mask_sha256)
        _sha("PredictionRecord.point_mask_sha256", self.point_mask_sha256)
        _sha("PredictionRecord.text_mask_sha256", self.text_mask_sha256)
        if self.mask_area is not None:
            _pos_int("PredictionRecord.mask_area", self.mask_area, 0)
        if self.score is not None:
            object.__setattr__(self, "score", _floats("PredictionRecord.score", [self.score])[0])
        secs = _floats("PredictionRecord.timings", self.timings.values())
        object.__setattr__(self, "timings", {str(k): v for k, v in zip(self.timings, secs, strict=True)})
        if self.error is None and self.mask_sha256 is None:
            raise ValueError("a PredictionRecord needs a mask_sha256 (or an error saying why there is none)")

    @classmethod
    def from_result(
        cls, item_id: int, result: Any, mask_sha256: str, score: float | None = None,
        point_mask_sha256: str | None = None, text_mask_sha256: str | None = None,
    ) -> PredictionRecord:
        """From a ``geoseg.types.GeoSegResult`` (duck-typed) whose mask was stored under ``mask_sha256`` (and its
        route masks under ``point_mask_sha256`` / ``text_mask_sha256`` when given)."""
        g = result.grounding
        return cls(
            item_id=item_id,
            model_version=result.model_version,
            boxes=tuple(b.as_tuple() for b in g.boxes),
            box=result.box.as_tuple() if result.box is not None else None,
            refined_box=result.refined_box.as_tuple() if result.refined_box is not None else None,
            phrase=g.phrase or None,
            keypoints=tuple(tuple(p) for p in result.keypoints.tolist()),
            route=result.route,
            valid_point=bool(result.valid_point),
            valid_text=bool(result.valid_text),
            mask_sha256=mask_sha256,
            mask_area=int(result.area),
            score=score,
            timings=dict(result.timings),
            raw_text=g.raw_text or None,
            reason=result.reason,
            point_mask_sha256=point_mask_sha256,
            text_mask_sha256=text_mask_sha256,
        )

    @classmethod
    def failure(cls, item_id: int, model_version: str, error: str | BaseException) -> PredictionRecord:
        """A prediction that failed: kept so the error is visible, retried by ``retry_failed``."""
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        return cls(item_id=item_id, model_version=model_version, error=text or "unknown error")

    def row(self) -> dict[str, Any]:
        d = _plain(self)
        d["boxes"] = [list(b) for b in self.boxes]
        d["box"] = list(self.box) if self.box is not None else None
        d["refined_box"] = list(self.refined_box) if self.refined_box is not None else None
        d["keypoints"] = [list(p) for p in self.keypoints]
        d["timings"] = dict(self.timings)
        return d


@dataclass(frozen=True)
class LabelTaskRecord:
    label_project_id: int
    item_id: int
    ls_task_id: int
    prediction_id: int | None = None
    ls_prediction_id: int | None = None

    def __post_init__(self) -> None:
        for n in ("label_project_id", "item_id", "ls_task_id"):
            _pos_int(f"LabelTaskRecord.{n}", getattr(self, n))
        for n in ("prediction_id", "ls_prediction_id"):
            if getattr(self, n) is not None:
                _pos_int(f"LabelTaskRecord.{n}", getattr(self, n))

    def row(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class AnnotationRecord:
    ls_annotation_id: int
    label_task_id: int
    verdict: Verdict | str
    created_at: datetime
    updated_at: datetime
    mask_sha256: str | None = None
    mask_area: int | None = None
    annotator: str | None = None
    lead_time: float | None = None
    iou_vs_prelabel: float | None = None

    def __post_init__(self) -> None:
        _pos_int("AnnotationRecord.ls_annotation_id", self.ls_annotation_id)
        _pos_int("AnnotationRecord.label_task_id", self.label_task_id)
        try:
            object.__setattr__(self, "verdict", Verdict(self.verdict))
        except ValueError:
            raise ValueError(
                f"AnnotationRecord.verdict must be one of {[v.value for v in Verdict]}, got {self.verdict!r}"
            ) from None
        _aware("AnnotationRecord.created_at", self.created_at)
        _aware("AnnotationRecord.updated_at", self.updated_at)
        _sha("AnnotationRecord.mask_sha256", self.mask_sha256)
        if self.verdict == Verdict.ACCEPT and self.mask_sha256 is None:
            raise ValueError(f"annotation {self.ls_annotation_id}: an accepted annotation needs a mask (mask_sha256)")
        if self.mask_area is not None:
            _pos_int("AnnotationRecord.mask_area", self.mask_area, 0)
        for n in ("lead_time", "iou_vs_prelabel"):
            v = getattr(self, n)
            if v is not None:
                object.__setattr__(self, n, _floats(f"AnnotationRecord.{n}", [v])[0])
        if self.iou_vs_prelabel is not None and not 0.0 <= self.iou_vs_prelabel <= 1.0:
            raise ValueError(f"AnnotationRecord.iou_vs_prelabel must lie in [0, 1], got {self.iou_vs_prelabel}")

    def row(self) -> dict[str, Any]:
        d = _plain(self)
        d["verdict"] = Verdict(self.verdict)
        return d


@dataclass(frozen=True)
class TripletRecord:
    """A triplet imported directly (e.g. from an existing dataset); sync creates them from annotations itself."""

    annotation_id: int
    item_id: int
    image_id: int
    query: str
    mask_sha256: str
    domain: str | None = None
    level: str | None = None

    def __post_init__(self) -> None:
        for n in ("annotation_id", "item_id", "image_id"):
            _pos_int(f"TripletRecord.{n}", getattr(self, n))
        _sha("TripletRecord.mask_sha256", self.mask_sha256, required=True)
        if not self.query:
            raise ValueError("TripletRecord.query must be non-empty")

    def row(self) -> dict[str, Any]:
        return _plain(self)


# --- read records ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkItem:
    """One item awaiting a prediction: its id and query."""

    item_id: int
    query: str


@dataclass(frozen=True)
class ImageWork:
    """The items of one image awaiting a prediction (the image is fetched and decoded once for all of them)."""

    image_id: int
    sha256: str
    uri: str
    items: tuple[WorkItem, ...]


def _plain(record: Any) -> dict[str, Any]:
    """Shallow field dict (``dataclasses.asdict`` deep-copies, which is slow on thousands of records)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    return [r.row() for r in records]
