"""Parse a grounder's free-text answer into a :class:`~geoseg.types.Grounding` in absolute image pixels.

``parse_grounding`` never raises on the model's text: whatever comes back, the result is a ``Grounding`` that keeps the
text in ``raw_text``. What it accepts, in order of preference:

1. Qwen-style reasoning: when the text holds ``</think>``, the answer after the last ``</think>`` is searched first
   (drafts inside the reasoning are only used when nothing parseable follows it).
2. Fenced code blocks (```` ```json ... ``` ```` or plain fences), then the whole text as JSON, then every balanced
   ``{...}`` / ``[...]`` embedded in prose, first to last. Each candidate is read as strict JSON, then with trailing
   commas removed, then as a Python literal (single-quoted dicts, which some models emit).
3. Shapes: a dict with ``bbox`` / ``bbox_2d`` / ``box`` (GeoSeg form or one Think2Seg entry), a list of such dicts
   (Think2Seg-RS form), a dict wrapping such a list or dict one level down (``{"objects": [...]}``), a bare box
   ``[x1, y1, x2, y2]`` or a list of bare boxes; a box may also be written as corner pairs ``[[x1, y1], [x2, y2]]``.
   Phrases come from ``prompt`` / ``label`` / ``phrase``; points from ``positive_points`` / ``points``.

Decisions (documented, tested):

- **No target**: an empty list ``[]``, ``{"bbox": null}`` or ``{"bbox": []}`` is the model saying "no target". The
  result has no box and ``error`` is None (an answer, not a failure).
- **Inverted boxes** (x2 < x1 or y2 < y1) are re-ordered: the four numbers still name the same rectangle, and models
  writing corners in the other order is common.
- **Out-of-image boxes** are clamped to the image; a box whose clamped area is zero (fully outside, or degenerate
  such as x1 == x2) is dropped with a reason.
- **Wrong convention guard**: with ``norm1000`` or ``norm1``, a coordinate beyond 110 % of the grid (or below -10 %)
  means the model did not answer in that convention; the box is dropped with a reason naming the convention, rather
  than clamped into a silently wrong full-image box.
- **Bad numbers** (NaN, infinity, booleans, non-numeric strings, wrong arity) drop that box or point with a reason.
  Numeric strings such as ``"12.5"`` are accepted.
- ``error`` is None only when the whole answer parsed cleanly; when some boxes survive and others were dropped,
  the surviving boxes are returned and ``error`` lists what was dropped. Nothing parseable: no box, ``error`` says why.
- Points are converted like boxes and clamped to the image; bad points are dropped (the box stays).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from geoseg.grounding.prompts import CONVENTIONS, Convention
from geoseg.types import Box, Grounding

BOX_KEYS: tuple[str, ...] = ("bbox_2d", "bbox", "box", "bounding_box")
PHRASE_KEYS: tuple[str, ...] = ("prompt", "label", "phrase", "entity", "name")
POINT_KEYS: tuple[str, ...] = ("positive_points", "points", "point_2d", "point")

#: Upper end of each normalised grid; pixel coordinates have no fixed grid.
GRID: dict[str, float] = {"norm1000": 1000.0, "norm1": 1.0}
#: How far beyond a normalised grid a coordinate may stray (as a fraction of the grid) before the box is rejected.
GRID_TOLERANCE = 0.10

_MAX_TEXT = 200_000
_MAX_CANDIDATES = 64
_MAX_ENTRIES = 100
_MAX_LITERAL = 20_000
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class _DropError(ValueError):
    """A box or point that cannot be used, with the reason."""


# ----------------------------------------------------------------------------------------------------------------
# coordinate conversion: one function per convention
# ----------------------------------------------------------------------------------------------------------------


def pixel_to_pixel(x: float, y: float, image_size: tuple[int, int]) -> tuple[float, float]:
    """``pixel``: already absolute pixels of the image."""
    return float(x), float(y)


def norm1000_to_pixel(x: float, y: float, image_size: tuple[int, int]) -> tuple[float, float]:
    """``norm1000`` (Qwen3-VL's grid): x_px = x / 1000 * W, y_px = y / 1000 * H."""
    W, H = image_size
    return x / 1000.0 * W, y / 1000.0 * H


def norm1_to_pixel(x: float, y: float, image_size: tuple[int, int]) -> tuple[float, float]:
    """``norm1``: x_px = x * W, y_px = y * H."""
    W, H = image_size
    return x * W, y * H


_TO_PIXEL = {"pixel": pixel_to_pixel, "norm1000": norm1000_to_pixel, "norm1": norm1_to_pixel}


def to_pixel(x: float, y: float, image_size: tuple[int, int], convention: Convention) -> tuple[float, float]:
    """Convert one (x, y) from ``convention`` to absolute pixels of an image of ``image_size = (W, H)``."""
    return _TO_PIXEL[convention](x, y, image_size)


def _check_image_size(image_size: Any) -> tuple[int, int]:
    try:
        W, H = image_size
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}") from exc
    if isinstance(W, bool) or isinstance(H, bool) or int(W) != W or int(H) != H or W <= 0 or H <= 0:
        raise ValueError(f"image_size must be two positive integers (width, height), got {image_size!r}")
    return int(W), int(H)


def _check_convention(convention: Any) -> Convention:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown coordinate convention {convention!r}; choose one of {CONVENTIONS}")
    return convention


# ----------------------------------------------------------------------------------------------------------------
# finding JSON in text
# ----------------------------------------------------------------------------------------------------------------


def strip_think(text: str) -> tuple[str, str]:
    """Split a Qwen-style answer into (answer, reasoning): the text after the last ``</think>`` and what precedes it.

    Without ``</think>`` the whole text is the answer (an unclosed ``<think>`` tag is just removed).
    """
    if "</think>" in text:
        head, _, tail = text.rpartition("</think>")
        return tail, head.replace("<think>", "")
    return text.replace("<think>", ""), ""


def _balanced_spans(text: str) -> list[str]:
    """Balanced {...} / [...] substrings in one left-to-right pass, outermost and leftmost first.

    Double-quoted strings inside brackets are skipped over (brackets in them do not count). An opener that never
    closes does not hide the balanced spans inside it. Linear in the text length.
    """
    stack: list[tuple[str, int]] = []
    spans: list[tuple[int, int]] = []
    in_string = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
        elif c == '"' and stack:
            in_string = True
        elif c in "{[":
            stack.append((c, i))
        elif c in "}]":
            want = "{" if c == "}" else "["
            # pop unclosed openers of the other kind until the matching one (or give up on this closer)
            for depth in range(len(stack) - 1, -1, -1):
                if stack[depth][0] == want:
                    spans.append((stack[depth][1], i + 1))
                    del stack[depth:]
                    break
        i += 1
    spans.sort(key=lambda se: (se[0], -(se[1] - se[0])))
    return [text[s:e] for s, e in spans[:_MAX_CANDIDATES]]


def json_candidates(text: str) -> Iterator[str]:
    """Substrings that may be the JSON answer, best first: fenced blocks, the whole text, embedded spans."""
    seen: set[str] = set()
    for m in _FENCE.finditer(text):
        body = m.group(2).strip()
        if body and body not in seen:
            seen.add(body)
            yield body
    whole = text.strip()
    if whole and whole not in seen:
        seen.add(whole)
        yield whole
    for span in _balanced_spans(text):
        if span not in seen:
            seen.add(span)
            yield span


def decode_json(candidate: str) -> Any:
    """Read a candidate as strict JSON, then without trailing commas, then as a Python literal; raise ValueError."""
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError):
        pass
    fixed = _TRAILING_COMMA.sub(r"\1", candidate)
    if fixed != candidate:
        try:
            return json.loads(fixed)
        except (ValueError, RecursionError):
            pass
    if candidate[:1] in "{[" and len(candidate) <= _MAX_LITERAL:
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    raise ValueError("not JSON")


# ----------------------------------------------------------------------------------------------------------------
# interpreting decoded JSON
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    box: Any
    points: Any = None
    label: Any = None


@dataclass
class _Shape:
    """What a decoded value says: entries with boxes, or an explicit "no target", plus reasons for skipped parts."""

    entries: list[_Entry] = field(default_factory=list)
    no_target: bool = False
    dropped: list[str] = field(default_factory=list)
    bare: bool = False  # boxes written as bare number lists, without a bbox key


def _is_number_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return False
        return True
    return False


def _is_bare_box(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_number_like(x) for x in v)


def _first_key(d: dict, keys: tuple[str, ...]) -> Any:
    """The first of ``keys`` present in ``d`` (exact, then case-insensitive: ``"BBox"``), as spelled in ``d``."""
    for k in keys:
        if k in d:
            return k
    lowered = {k.strip().lower(): k for k in d if isinstance(k, str)}
    for k in keys:
        if k in lowered:
            return lowered[k]
    return None


def _entry_from_dict(d: dict) -> _Entry | None:
    """One entry from a dict with a box key; None when the dict says "no box" (null or empty)."""
    key = _first_key(d, BOX_KEYS)
    assert key is not None
    box = d[key]
    label = None
    lk = _first_key(d, PHRASE_KEYS)
    if lk is not None:
        label = d[lk]
    pk = _first_key(d, POINT_KEYS)
    points = d[pk] if pk is not None else None
    if box is None or (isinstance(box, (list, tuple, str)) and len(box) == 0):
        return None
    return _Entry(box=box, points=points, label=label)


def interpret(value: Any) -> _Shape | None:
    """The grounding shape of a decoded JSON value, or None when it is not a grounding answer at all."""
    if isinstance(value, dict):
        if _first_key(value, BOX_KEYS) is not None:
            entry = _entry_from_dict(value)
            return _Shape(no_target=True) if entry is None else _Shape(entries=[entry])
        # a wrapper one level down: {"objects": [...]}, {"answer": {...}}
        for v in value.values():
            if isinstance(v, dict) and _first_key(v, BOX_KEYS) is not None:
                return interpret(v)
            if isinstance(v, list) and v and not _is_bare_box(v):  # a bare 4-list here may be a size, not a box
                inner = interpret(v)
                if inner is not None:
                    return inner
        return None
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return _Shape(no_target=True)
        if _is_bare_box(value):
            return _Shape(entries=[_Entry(box=value)], bare=True)
        shape = _Shape()
        recognised = False
        for i, item in enumerate(value[:_MAX_ENTRIES]):
            if isinstance(item, dict) and _first_key(item, BOX_KEYS) is not None:
                recognised = True
                entry = _entry_from_dict(item)
                if entry is not None:
                    shape.entries.append(entry)
            elif _is_bare_box(item):
                recognised = True
                shape.entries.append(_Entry(box=item))
            else:
                shape.dropped.append(f"entry {i}: no box in {_short(item)}")
        if len(value) > _MAX_ENTRIES:
            shape.dropped.append(f"{len(value) - _MAX_ENTRIES} entries beyond the first {_MAX_ENTRIES} ignored")
        if not recognised:
            return None
        shape.bare = all(_is_bare_box(item) for item in value[:_MAX_ENTRIES])
        if not shape.entries:
            shape.no_target = True
        return shape
    return None


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _DropError(f"{what} is not a number: {_short(v)}")
    try:
        f = float(v)
    except (ValueError, OverflowError) as exc:
        raise _DropError(f"{what} is not a number: {_short(v)}") from exc
    if not math.isfinite(f):
        raise _DropError(f"{what} is not finite: {_short(v)}")
    return f


def _check_grid(values: list[float], convention: Convention, what: str) -> None:
    grid = GRID.get(convention)
    if grid is None:
        return
    lo, hi = -GRID_TOLERANCE * grid, (1.0 + GRID_TOLERANCE) * grid
    bad = [v for v in values if v < lo or v > hi]
    if bad:
        raise _DropError(
            f"{what} {_short(values)} lies outside the {convention} range [0, {grid:g}] "
            f"(is the coordinate convention wrong?)"
        )


def box_to_pixels(values: Any, image_size: tuple[int, int], convention: Convention) -> Box:
    """Convert ``[x1, y1, x2, y2]`` in ``convention`` to a clamped pixel :class:`Box` (re-ordered if inverted).

    Raises ValueError (with the reason) when the values cannot make a box with positive area inside the image.
    """
    if (
        isinstance(values, (list, tuple))
        and len(values) == 2
        and all(isinstance(c, (list, tuple)) and len(c) == 2 for c in values)
    ):
        values = [*values[0], *values[1]]  # corner pairs [[x1, y1], [x2, y2]]
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise _DropError(f"a box needs 4 numbers [x1, y1, x2, y2], got {_short(values)}")
    x1, y1, x2, y2 = (_number(v, "box coordinate") for v in values)
    _check_grid([x1, y1, x2, y2], convention, "box")
    W, H = image_size
    px1, py1 = to_pixel(min(x1, x2), min(y1, y2), image_size, convention)
    px2, py2 = to_pixel(max(x1, x2), max(y1, y2), image_size, convention)
    cx1, cx2 = min(max(px1, 0.0), float(W)), min(max(px2, 0.0), float(W))
    cy1, cy2 = min(max(py1, 0.0), float(H)), min(max(py2, 0.0), float(H))
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        raise _DropError(
            f"box {_short(values)} ({convention}) has zero area inside the {W}x{H} image "
            "(degenerate or outside the image)"
        )
    return Box(cx1, cy1, cx2, cy2)


def point_to_pixels(values: Any, image_size: tuple[int, int], convention: Convention) -> tuple[float, float]:
    """Convert one ``[x, y]`` in ``convention`` to pixels, clamped into the image; ValueError when unusable."""
    if isinstance(values, dict) and "x" in values and "y" in values:
        values = [values["x"], values["y"]]
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise _DropError(f"a point needs 2 numbers [x, y], got {_short(values)}")
    x, y = (_number(v, "point coordinate") for v in values)
    _check_grid([x, y], convention, "point")
    W, H = image_size
    px, py = to_pixel(x, y, image_size, convention)
    # clamp inside the pixel grid: a point at x == W would index past the last column
    return min(max(px, 0.0), W - 1e-6), min(max(py, 0.0), H - 1e-6)


def _points_list(raw: Any) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)) and len(raw) == 2 and all(_is_number_like(v) for v in raw):
        return [raw]  # a single point written flat
    if isinstance(raw, (list, tuple)):
        return list(raw)[:_MAX_ENTRIES]
    return [raw]


# ----------------------------------------------------------------------------------------------------------------
# the public entry point
# ----------------------------------------------------------------------------------------------------------------


def _build(shape: _Shape, raw_text: str, image_size: tuple[int, int], convention: Convention) -> Grounding:
    boxes: list[Box] = []
    points: list[tuple[tuple[float, float], ...]] = []
    labels: list[str] = []
    dropped = list(shape.dropped)
    any_points = False
    for i, entry in enumerate(shape.entries):
        try:
            box = box_to_pixels(entry.box, image_size, convention)
        except _DropError as exc:
            dropped.append(f"box {i}: {exc}")
            continue
        pts: list[tuple[float, float]] = []
        for j, p in enumerate(_points_list(entry.points)):
            try:
                pts.append(point_to_pixels(p, image_size, convention))
            except _DropError as exc:
                dropped.append(f"box {i} point {j}: {exc}")
        any_points = any_points or bool(pts)
        boxes.append(box)
        points.append(tuple(pts))
        labels.append(entry.label.strip() if isinstance(entry.label, str) else "")
    phrase = next((lab for lab in labels if lab), "")
    if not boxes:
        if shape.no_target and not dropped:
            return Grounding(raw_text=raw_text, error=None)
        reason = "; ".join(dropped) if dropped else "no usable box"
        return Grounding(raw_text=raw_text, error=f"no usable box in the answer: {reason}")
    error = f"dropped {len(dropped)} part(s) of the answer: " + "; ".join(dropped) if dropped else None
    return Grounding(
        boxes=tuple(boxes),
        phrase=phrase,
        points=tuple(points) if any_points else (),
        raw_text=raw_text,
        error=error,
        phrases=tuple(labels) if any(labels) else (),
    )


def _first_shape(text: str) -> _Shape | None:
    """The first candidate with a grounding shape. A bare number list nested inside JSON that decoded but held no
    grounding (``{"image_size": [0, 0, 810, 810]}``) is not taken for a box."""
    decoded_other: list[str] = []
    for cand in json_candidates(text):
        try:
            value = decode_json(cand)
        except ValueError:
            continue
        shape = interpret(value)
        if shape is None:
            if isinstance(value, (dict, list)):
                decoded_other.append(cand)
            continue
        if shape.bare and any(cand in other for other in decoded_other):
            continue
        return shape
    return None


def parse_grounding(
    text: Any, image_size: tuple[int, int], convention: str = "norm1000"
) -> Grounding:
    """Parse a grounder's answer into a :class:`Grounding` with boxes and points in absolute pixels.

    ``image_size`` is ``(width, height)`` of the image the coordinates refer to; ``convention`` is how the model was
    asked to write coordinates (``pixel``, ``norm1000``, ``norm1``). Never raises on the text: garbage gives a
    Grounding with no box, ``error`` set and ``raw_text`` kept. Raises ValueError only for an invalid
    ``image_size`` or ``convention`` (a caller bug, not a model answer).
    """
    size = _check_image_size(image_size)
    conv = _check_convention(convention)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        kind = type(text).__name__
        return Grounding(raw_text="" if text is None else repr(text), error=f"answer is not text: {kind}")
    raw = text
    if not text.strip():
        return Grounding(raw_text=raw, error="empty answer from the grounder")
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT]
    try:
        answer, reasoning = strip_think(text)
        shape = _first_shape(answer)
        if shape is None and reasoning:
            shape = _first_shape(reasoning)
        if shape is None:
            return Grounding(raw_text=raw, error="no JSON grounding (bbox / bbox_2d) found in the answer")
        return _build(shape, raw, size, conv)
    except Exception as exc:  # the parser must never kill a batch; keep the text and say what went wrong
        return Grounding(raw_text=raw, error=f"could not parse the answer: {type(exc).__name__}: {exc}")


def rescale_grounding(g: Grounding, from_size: tuple[int, int], to_size: tuple[int, int]) -> Grounding:
    """Map a pixel Grounding from an image of ``from_size`` to one of ``to_size`` (both (W, H)).

    Used for models that answer in pixels of their *resized* input (Qwen2.5-VL): parse against the resized size,
    then rescale to the original image.
    """
    fw, fh = _check_image_size(from_size)
    tw, th = _check_image_size(to_size)
    sx, sy = tw / fw, th / fh
    boxes = tuple(
        Box(min(b.x1 * sx, tw), min(b.y1 * sy, th), min(b.x2 * sx, tw), min(b.y2 * sy, th)) for b in g.boxes
    )
    points = tuple(tuple((min(x * sx, tw - 1e-6), min(y * sy, th - 1e-6)) for x, y in ps) for ps in g.points)
    return Grounding(
        boxes=boxes, phrase=g.phrase, points=points, raw_text=g.raw_text, error=g.error, phrases=g.phrases
    )


def note_truncation(g: Grounding, limit_name: str, limit: int) -> Grounding:
    """When no box came out of an answer that hit the generation limit, say so in ``error`` (the usual fix is a
    larger limit, not a better parser)."""
    if g.boxes or g.error is None:
        return g
    error = f"{g.error} (the answer was cut off at {limit_name}={limit}; raise {limit_name})"
    return Grounding(
        boxes=g.boxes, phrase=g.phrase, points=g.points, raw_text=g.raw_text, error=error, phrases=g.phrases
    )
