"""Benchmark readers: the GeoSeg-Bench layout and the EarthReason layout, into one typed sample record.

GeoSeg-Bench (public GeoSeg code)::

    root/images/<file>            RGB images
    root/masks/<file>.png         binary masks (any non-zero pixel is foreground)
    root/annotations/<Domain>.json  a list of {id, file_name, mask_path, height, width, difficulty, question}

``file_name`` / ``mask_path`` are taken relative to ``root`` first, then to ``images/`` / ``masks/`` (by base name),
so both ``"images/a.png"`` and ``"a.png"`` work. ``difficulty`` may be ``"L1"``..``"L3"``, ``1``..``3`` or
``easy``/``medium``/``hard``; it is normalised to ``"L1"``..``"L3"``.

EarthReason::

    root/images/<id>.<ext>   root/labels/<id>.png   root/QAs/<id>.json

where a QA file holds ``{"questions": [...], "answer": [...]}`` (also accepted: ``question``/``query``/``text``, a
string or a list). The questions of one file are paraphrases of one target: by default the first is the sample's
query (as SegEarth-R1's evaluation does); ``all_questions=True`` makes one sample per question. EarthReason has no
domain or level: they read as ``"EarthReason"`` and ``"L?"``.

A bad benchmark (missing file, malformed JSON, size mismatch) raises :class:`BenchmarkError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg import vocabulary

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


class BenchmarkError(ValueError):
    """A benchmark directory that cannot be read as claimed; the message names the offending file."""


def normalise_level(value: Any) -> str:
    """``"L2"``, ``2``, ``"2"``, ``"medium"`` -> ``"L2"``; unknown values raise BenchmarkError."""
    if isinstance(value, str) and value.strip() == "L?":
        return "L?"
    try:
        return vocabulary.normalise_level(value) or "L?"
    except ValueError:
        raise BenchmarkError(f"difficulty must be L1..L3, 1..3 or easy/medium/hard, got {value!r}") from None


def load_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot read image {path}: {exc}") from exc


def load_mask(path: Path) -> np.ndarray:
    """A mask file as (H, W) bool: any non-zero pixel (of any channel) is foreground."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot read mask {path}: {exc}") from exc
    if a.ndim == 3:
        a = a.any(axis=2)
    return a.astype(bool)


@dataclass(frozen=True)
class BenchSample:
    """One (image, query, ground-truth mask) pair of a benchmark, with its domain and level."""

    id: str
    image_path: Path
    mask_path: Path
    query: str
    domain: str
    level: str
    height: int
    width: int

    def __post_init__(self) -> None:
        if not str(self.id):
            raise BenchmarkError("a benchmark sample needs a non-empty id")
        if not self.query or not str(self.query).strip():
            raise BenchmarkError(f"sample {self.id}: empty question")
        if self.height <= 0 or self.width <= 0:
            raise BenchmarkError(f"sample {self.id}: bad size {self.width}x{self.height}")

    def load_image(self) -> np.ndarray:
        return load_rgb(self.image_path)

    def load_mask(self) -> np.ndarray:
        m = load_mask(self.mask_path)
        if m.shape != (self.height, self.width):
            raise BenchmarkError(
                f"sample {self.id}: mask {self.mask_path} is {m.shape[1]}x{m.shape[0]}, "
                f"annotation says {self.width}x{self.height}"
            )
        return m

    @property
    def groups(self) -> dict[str, str]:
        return {"domain": self.domain, "level": self.level}


@dataclass(frozen=True)
class Benchmark:
    """A read benchmark: where it is, which layout it had, and its samples in a stable order."""

    name: str
    root: Path
    layout: str
    samples: tuple[BenchSample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[BenchSample]:
        return iter(self.samples)

    def domains(self) -> list[str]:
        return sorted({s.domain for s in self.samples})

    def subset(self, limit: int | None = None, domains: Sequence[str] | None = None) -> Benchmark:
        picked = [s for s in self.samples if not domains or s.domain in domains]
        if limit is not None:
            picked = picked[: max(0, int(limit))]
        return Benchmark(self.name, self.root, self.layout, tuple(picked))


def _resolve(root: Path, sub: str, name: str, what: str, where: Path) -> Path:
    if not name:
        raise BenchmarkError(f"{where}: empty {what}")
    p = Path(name)
    candidates = [p] if p.is_absolute() else [root / p, root / sub / p, root / sub / p.name]
    for c in candidates:
        if c.is_file():
            return c
    raise BenchmarkError(f"{where}: {what} {name!r} not found under {root}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"cannot read {path}: {exc}") from exc


def detect_layout(root: Path) -> str:
    """``"geoseg"`` when ``annotations/*.json`` exists, ``"earthreason"`` when ``QAs/`` and ``labels/`` do."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"benchmark directory {root} does not exist")
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.json")):
        return "geoseg"
    if (root / "QAs").is_dir() and (root / "labels").is_dir():
        return "earthreason"
    raise BenchmarkError(
        f"{root} is neither a GeoSeg-Bench layout (annotations/<Domain>.json) nor an EarthReason layout "
        "(images/, labels/, QAs/)"
    )


def read_geoseg_bench(root: Path) -> Benchmark:
    root = Path(root)
    samples: list[BenchSample] = []
    seen: set[str] = set()
    for ann in sorted((root / "annotations").glob("*.json")):
        domain = ann.stem
        entries = _read_json(ann)
        if not isinstance(entries, list):
            raise BenchmarkError(f"{ann}: expected a JSON list of samples, got {type(entries).__name__}")
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise BenchmarkError(f"{ann}[{i}]: expected an object, got {type(e).__name__}")
            missing = [k for k in ("id", "file_name", "mask_path", "question") if k not in e]
            if missing:
                raise BenchmarkError(f"{ann}[{i}]: missing keys {missing}")
            sid = str(e["id"])
            if sid in seen:
                raise BenchmarkError(f"{ann}[{i}]: duplicate sample id {sid!r}")
            seen.add(sid)
            try:
                h, w = int(e.get("height", 0)), int(e.get("width", 0))
            except (TypeError, ValueError) as exc:
                raise BenchmarkError(f"{ann}[{i}]: height/width must be integers") from exc
            image_path = _resolve(root, "images", str(e["file_name"]), "image", ann)
            mask_path = _resolve(root, "masks", str(e["mask_path"]), "mask", ann)
            if h <= 0 or w <= 0:
                from PIL import Image

                with Image.open(image_path) as im:
                    w, h = im.size
            samples.append(
                BenchSample(
                    id=sid, image_path=image_path, mask_path=mask_path, query=str(e["question"]),
                    domain=str(e.get("domain") or domain), level=normalise_level(e.get("difficulty", "L?")),
                    height=h, width=w,
                )
            )
    return Benchmark(root.name, root, "geoseg", tuple(samples))


def _questions(qa: Any, where: Path) -> list[str]:
    if isinstance(qa, str):
        return [qa]
    if isinstance(qa, list):
        out: list[str] = []
        for x in qa:
            out.extend(_questions(x, where))
        return out
    if isinstance(qa, dict):
        for key in ("questions", "question", "query", "text"):
            if key in qa:
                return _questions(qa[key], where)
    raise BenchmarkError(f"{where}: no question found (looked for question/questions/query/text)")


def read_earthreason(root: Path, all_questions: bool = False) -> Benchmark:
    from PIL import Image

    root = Path(root)
    samples: list[BenchSample] = []
    for qa_path in sorted((root / "QAs").glob("*.json")):
        stem = qa_path.stem
        qa = _read_json(qa_path)
        image = next((root / "images" / f"{stem}{s}" for s in IMAGE_SUFFIXES
                      if (root / "images" / f"{stem}{s}").is_file()), None)
        if image is None:
            raise BenchmarkError(f"{qa_path}: no image images/{stem}.* found")
        label = root / "labels" / f"{stem}.png"
        if not label.is_file():
            raise BenchmarkError(f"{qa_path}: no label labels/{stem}.png found")
        with Image.open(image) as im:
            w, h = im.size
        questions = [q for q in _questions(qa, qa_path) if q.strip()]
        if not questions:
            raise BenchmarkError(f"{qa_path}: every question is empty")
        if not all_questions:
            questions = questions[:1]
        for j, q in enumerate(questions):
            samples.append(
                BenchSample(
                    id=stem if len(questions) == 1 else f"{stem}#{j}", image_path=image, mask_path=label,
                    query=q, domain="EarthReason", level="L?", height=h, width=w,
                )
            )
    return Benchmark(root.name, root, "earthreason", tuple(samples))


def read_benchmark(root: str | Path, *, all_questions: bool = False) -> Benchmark:
    """Read a benchmark directory in either layout (auto-detected); ``all_questions``: see EarthReason above."""
    root = Path(root)
    layout = detect_layout(root)
    bench = read_geoseg_bench(root) if layout == "geoseg" else read_earthreason(root, all_questions)
    if not bench.samples:
        raise BenchmarkError(f"{root}: the benchmark has no samples")
    return bench
