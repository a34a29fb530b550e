"""``GeoSegPipeline``: the paper's three stages on one (image, query), or a batch of them.

Stage 1 — the grounder 𝓛 reads the whole image and the query and returns box(es) and an entity phrase.

Stage 2 — per box: clamp to the image; refine (Eq. 2, ``config.refine``; when switched off, the clamped raw box is
the RoI); the integer RoI ``roi_from_box``; the crop ``image[Y1:Y2, X1:X2]``; **one** SAM3 vision encoding of the crop
(``segmenter.set_image``) shared by both routes. When the segmenter has ``set_images`` the crops are encoded in
batches (``encode_crops``: all boxes of an item; in ``run_batch`` all crops of a chunk; ``encode_batch_size`` crops per
forward, a segmenter option).

Stage 3 — Route A (``config.route_a``): CLIP Surgery similarity map of the phrase over the crop → Top-K NMS keypoints
(Eq. 3: k, τ, radius) → SAM3 point prompt; ``config.route_a_points`` may use the grounder's Think2Seg-RS
positive points beside (``"both"``) or instead of (``"grounder"``; CLIP keypoints for a box without points) the CLIP
keypoints; a NaN/inf similarity map leaves Route A without keypoints (invalid, with the reason in ``note``). Route B
(``config.route_b``): SAM3 text prompt with the box's phrase (its own when the grounder labelled each box, else the
grounding's phrase, else the query). Both masks are pasted back to full resolution, checked for validity (Eq. 6; Route A
also needs at least one keypoint) and fused (Eq. 7).

Several boxes (the Think2Seg-RS form: a list of targets) are segmented independently and the final mask is the union
of the per-box fused masks; ``mask_point``/``mask_text`` are the unions of the per-box route masks, ``keypoints`` all
boxes' keypoints, ``box``/``refined_box``/``roi`` describe the first box, ``route`` is the first non-empty per-box
route, and ``note`` lists every box's route. No box → an empty mask with the reason (the grounder's error, or "no
target").

Ablations: ``GeoSegConfig.ablation(name)`` gives the paper's Table 3 rows (full, no_refine, no_route_a, no_route_b);
a disabled route neither runs nor loads its model (Route A off → no CLIP model is built).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.box import clamp_box, refine_box, roi_from_box
from geoseg.keypoints import topk_nms_keypoints
from geoseg.masks import fuse_masks, paste_back, validity, validity_margin
from geoseg.metrics import mask_iou
from geoseg.protocols import BatchGrounder, Grounder, Matcher, Segmenter, check_role
from geoseg.types import TINY_MODEL_WARNING, BackendSpec, Box, BoxOutcome, GeoSegConfig, GeoSegResult, Grounding

STAGES = ("grounding", "crop", "encode", "similarity", "keypoints", "route_a", "route_b", "fusion")


def check_image(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB, non-empty; anything else is a clear ValueError."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) RGB array, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image is empty: shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {a.dtype}")
    return a


def check_query(query: Any) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query must be a non-empty string, got {query!r}")
    return query.strip()


def _strip_gpu_flag(spec: BackendSpec, role: str, profile: str) -> BackendSpec:
    """Honour ``options.require_gpu`` (paper profile) with a clear error, and drop it before the backend sees it."""
    if not spec.options.get("require_gpu"):
        return spec
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"the {profile!r} profile needs a CUDA GPU for the {role} ({spec.kind}: {spec.model}) and none is "
            "visible; run it on a GPU node (see geoseg/profiles.py for VRAM and weights), or use --profile tiny "
            "to exercise the code path on CPU"
        )
    return BackendSpec(spec.kind, spec.model, {k: v for k, v in spec.options.items() if k != "require_gpu"})


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - t0)
        return now


@dataclass(frozen=True)
class BoxSegmentation:
    """What :meth:`GeoSegPipeline.segment_box` produced for one box: full-resolution masks (None for a route that
    did not run, or for a box outside the image) and the scalar :class:`~geoseg.types.BoxOutcome`."""

    box: Box
    outcome: BoxOutcome
    refined_box: Box | None = None
    roi: tuple[int, int, int, int] | None = None
    fused: np.ndarray | None = None
    mask_point: np.ndarray | None = None
    mask_text: np.ndarray | None = None
    valid_point: bool = False
    valid_text: bool = False
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    warning: str | None = None  # e.g. a NaN/inf similarity map: Route A invalid, said in the result's note


def _union(masks: list[np.ndarray | None], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        if m is not None:
            np.logical_or(out, m, out=out)
    return out


def union_of_boxes(
    parts: list[BoxSegmentation], shape: tuple[int, int], config: GeoSegConfig, note: str | None = None
) -> dict[str, Any]:
    """The result fields for several boxes (module docstring): the final mask and each route mask are unions of the
    per-box masks; ``box``/``refined_box``/``roi`` describe the first box inside the image; ``route`` is the first
    non-empty per-box route; ``note`` lists every box's route when there are several."""
    routes = [p.outcome.route for p in parts]
    route = next((r for r in routes if r != "empty"), "empty")
    first = next((p for p in parts if p.roi is not None), None)
    notes = ([note] if note else []) + [p.warning for p in parts if p.warning]
    if len(parts) > 1:
        notes.append(f"{len(parts)} boxes, mask = union of per-box masks; routes: {', '.join(routes)}")
    reasons = [p.outcome.reason for p in parts if p.outcome.reason]
    kps = [p.keypoints for p in parts if len(p.keypoints)]
    return {
        "mask": _union([p.fused for p in parts], shape),
        "route": route,
        "box": first.box if first else None,
        "refined_box": first.refined_box if first else None,
        "roi": first.roi if first else None,
        "keypoints": np.concatenate(kps) if kps else np.zeros((0, 2)),
        "mask_point": _union([p.mask_point for p in parts], shape) if config.route_a else None,
        "mask_text": _union([p.mask_text for p in parts], shape) if config.route_b else None,
        "valid_point": any(p.valid_point for p in parts),
        "valid_text": any(p.valid_text for p in parts),
        "reason": None if route != "empty" else "; ".join(reasons) or "no valid route",
        "note": "; ".join(notes) or None,
        "per_box": tuple(p.outcome for p in parts),
    }


class GeoSegPipeline:
    """Grounder → refine → crop → (Route A ∥ Route B on one SAM3 encoding) → validity → fusion.

    Models not given are built lazily from ``config``'s backend specs on first use and kept for every later call.
    """

    def __init__(
        self,
        config: GeoSegConfig,
        grounder: Grounder | None = None,
        matcher: Matcher | None = None,
        segmenter: Segmenter | None = None,
    ) -> None:
        if not isinstance(config, GeoSegConfig):
            raise ValueError(f"GeoSegPipeline needs a GeoSegConfig, got {type(config).__name__}")
        self.config = config
        self._grounder = None if grounder is None else check_role(grounder, "grounder", Grounder)
        self._matcher = None if matcher is None else check_role(matcher, "matcher", Matcher)
        self._segmenter = None if segmenter is None else check_role(segmenter, "segmenter", Segmenter)

    # ------------------------------------------------------------------------------------------------ models

    @property
    def grounder(self) -> Grounder:
        if self._grounder is None:
            from geoseg.grounding import build_grounder

            self._grounder = build_grounder(_strip_gpu_flag(self.config.grounder, "grounder", self.config.profile))
        return self._grounder

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            from geoseg.clip_surgery import build_matcher

            self._matcher = build_matcher(_strip_gpu_flag(self.config.matcher, "matcher", self.config.profile))
        return self._matcher

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            from geoseg.segment import build_segmenter

            self._segmenter = build_segmenter(_strip_gpu_flag(self.config.segmenter, "segmenter", self.config.profile))
        return self._segmenter

    def load(self) -> GeoSegPipeline:
        """Build every model the config needs now (instead of on the first item)."""
        _ = self.grounder, self.segmenter
        if self.config.route_a:
            _ = self.matcher
        return self

    @property
    def model_version(self) -> str:
        return self.config.model_version

    @property
    def meaningless(self) -> bool:
        """True when any model is a tiny random one: the masks exercise the code and mean nothing.

        A model already built (or injected) answers for itself (``meaningless``, declared by every role in
        ``geoseg.protocols``); a model not built yet is judged by its spec (kind ``tiny``). The ``tiny`` profile is
        always meaningless.
        """
        if self.config.profile == "tiny":
            return True
        roles = [(self._grounder, self.config.grounder), (self._segmenter, self.config.segmenter)]
        if self.config.route_a:
            roles.append((self._matcher, self.config.matcher))
        return any(spec.kind == "tiny" if model is None else bool(model.meaningless) for model, spec in roles)

    def with_config(self, config: GeoSegConfig) -> GeoSegPipeline:
        """A pipeline with other switches/thresholds sharing this one's loaded models (for ablation sweeps)."""
        return GeoSegPipeline(config, self._grounder, self._matcher, self._segmenter)

    # ------------------------------------------------------------------------------------------------ one item

    def __call__(self, image: np.ndarray, query: str) -> GeoSegResult:
        image = check_image(image)
        query = check_query(query)
        grounder = self.grounder  # built before the clock starts: load time is not grounding time
        t0 = time.perf_counter()
        grounding = grounder.ground(image, query)
        return self.segment(image, query, grounding, {"grounding": time.perf_counter() - t0})

    def segment(
        self,
        image: np.ndarray,
        query: str,
        grounding: Grounding,
        timings: dict[str, float] | None = None,
        states: dict[int, Any] | None = None,
    ) -> GeoSegResult:
        """Stages 2-3 for a grounding already obtained (the batch path grounds many items first): each box through
        :meth:`segment_box`, then :func:`union_of_boxes`.

        ``states``: segmenter encodings of box ``i``'s crop already computed (``encode_crops``, batched); without
        them the crops of a multi-box grounding are encoded together when the segmenter has ``set_images``."""
        image = check_image(image)
        query = check_query(query)
        if not isinstance(grounding, Grounding):
            raise ValueError(f"grounding must be a Grounding, got {type(grounding).__name__}")
        H, W = image.shape[:2]
        if grounding.boxes:  # build the models before the clock starts: load time is not stage time
            _ = self.segmenter, (self.matcher if self.config.route_a else None)
        clock = _Clock()
        clock.timings.update(timings or {})
        t_start = time.perf_counter()
        note = TINY_MODEL_WARNING if self.meaningless else None
        if not grounding.boxes:
            fields: dict[str, Any] = {
                "mask": np.zeros((H, W), dtype=bool),
                "route": "empty",
                "reason": grounding.error or "no target: the grounder returned no box",
                "note": note,
            }
        else:
            if states is None and len(grounding.boxes) > 1:
                states = self.encode_crops([(image, grounding)])[0]
                t_start = clock.add("encode", t_start)
            states = states or {}
            parts = [
                self.segment_box(image, b, i, grounding.phrase_of(i).strip() or query, clock, grounding, states.get(i))
                for i, b in enumerate(grounding.boxes)
            ]
            t = time.perf_counter()
            fields = union_of_boxes(parts, (H, W), self.config, note)
            clock.add("fusion", t)
        clock.timings["total"] = clock.timings.get("grounding", 0.0) + (time.perf_counter() - t_start)
        return GeoSegResult(grounding=grounding, model_version=self.model_version, timings=clock.timings, **fields)

    def segment_box(
        self,
        image: np.ndarray,
        box: Box,
        index: int,
        phrase: str,
        clock: _Clock,
        grounding: Grounding | None = None,
        state: Any = None,
    ) -> BoxSegmentation:
        """Stages 2-3 for one box: clamp, refine (Eq. 2), crop, one SAM3 encoding (``state`` when already encoded),
        Route A and/or Route B, validity (Eq. 6) and fusion (Eq. 7); masks at full resolution. ``grounding`` gives
        the grounder's positive points for ``config.route_a_points``."""
        cfg = self.config
        H, W = image.shape[:2]
        t = time.perf_counter()
        clamped = clamp_box(box, W, H)
        if clamped.width <= 0 or clamped.height <= 0:
            clock.add("crop", t)
            reason = f"box {index} {box.as_tuple()} lies outside the {W}x{H} image"
            return BoxSegmentation(box=box, outcome=BoxOutcome(index, "empty", reason=reason))
        refined: Box = refine_box(box, W, H, cfg.alpha, cfg.beta) if cfg.refine else clamped
        roi = roi_from_box(refined)
        X1, Y1, X2, Y2 = roi
        crop = image[Y1:Y2, X1:X2]
        t = clock.add("crop", t)
        if state is None:
            state = self.segmenter.set_image(crop)
        t = clock.add("encode", t)
        m_pt = m_txt = None
        v_pt = v_txt = False
        kps_full = np.zeros((0, 2), dtype=np.float64)
        reasons: list[str] = []
        warning = None
        if cfg.route_a:
            kps, t, warning = self._route_a_keypoints(crop, phrase, index, roi, grounding, clock, t)
            if len(kps):
                m_pt = paste_back(self.segmenter.predict_points(state, kps), roi, W, H)
                v_pt = validity(m_pt, roi, cfg.gamma)
                kps_full = kps + np.array([X1, Y1], dtype=np.float64)
            else:
                m_pt = np.zeros((H, W), dtype=bool)
                reasons.append(warning or f"box {index}: route A found no keypoint with similarity >= tau={cfg.tau}")
            t = clock.add("route_a", t)
        if cfg.route_b:
            m_txt = paste_back(self.segmenter.predict_text(state, phrase), roi, W, H)
            v_txt = validity(m_txt, roi, cfg.gamma)
            t = clock.add("route_b", t)
        fused, route = fuse_masks(m_pt, m_txt, v_pt, v_txt)
        if route == "empty":
            reasons.append(f"box {index}: no valid route (mask area below gamma={cfg.gamma} of the RoI)")
        ran_a = m_pt is not None and len(kps_full) > 0
        outcome = BoxOutcome(
            index,
            route,
            iou_routes=mask_iou(m_pt, m_txt) if ran_a and m_txt is not None else None,
            margin_point=validity_margin(m_pt, roi, cfg.gamma) if ran_a else None,
            margin_text=validity_margin(m_txt, roi, cfg.gamma) if m_txt is not None else None,
            reason="; ".join(reasons) or None,
        )
        clock.add("fusion", t)
        return BoxSegmentation(box, outcome, refined, roi, fused, m_pt, m_txt, v_pt, v_txt, kps_full, warning)

    def _route_a_keypoints(
        self,
        crop: np.ndarray,
        phrase: str,
        index: int,
        roi: tuple[int, int, int, int],
        grounding: Grounding | None,
        clock: _Clock,
        t: float,
    ) -> tuple[np.ndarray, float, str | None]:
        """Route A's point prompts in crop pixels (Eq. 3 on the CLIP Surgery map, and/or the grounder's positive
        points per ``config.route_a_points``), the clock mark, and a warning when the map was NaN/inf."""
        cfg = self.config
        given = grounder_points(grounding, index, roi) if grounding is not None else np.zeros((0, 2))
        kps = np.zeros((0, 2))
        warning = None
        if cfg.route_a_points != "grounder" or not len(given):
            phi = self.matcher.similarity_map(crop, phrase)
            t = clock.add("similarity", t)
            if np.isfinite(phi).all():
                kps = topk_nms_keypoints(phi, k=cfg.k, tau=cfg.tau, radius=cfg.nms_radius)
            else:  # design §2: a NaN/inf map gives no keypoint; say why instead of raising
                warning = f"box {index}: route A invalid: the similarity map has NaN/inf values"
        if cfg.route_a_points != "clip" and len(given):
            kps = given if cfg.route_a_points == "grounder" else np.concatenate([given, kps])
        return kps, clock.add("keypoints", t), warning

    def encode_crops(self, pairs: list[tuple[np.ndarray, Grounding]]) -> list[dict[int, Any]]:
        """The segmenter encodings of every box crop of several (image, grounding) pairs, batched through
        ``segmenter.set_images`` (``encode_batch_size`` crops per forward); a dict per pair, box index -> state.
        Empty dicts when the segmenter has no ``set_images``, or for boxes outside their image."""
        many = getattr(self.segmenter, "set_images", None)  # optional batch method (not every backend has it)
        out: list[dict[int, Any]] = [{} for _ in pairs]
        if not callable(many):
            return out
        cfg, jobs, crops = self.config, [], []
        for p, (image, g) in enumerate(pairs):
            H, W = image.shape[:2]
            for i, box in enumerate(g.boxes):
                clamped = clamp_box(box, W, H)
                if clamped.width <= 0 or clamped.height <= 0:
                    continue
                X1, Y1, X2, Y2 = roi_from_box(refine_box(box, W, H, cfg.alpha, cfg.beta) if cfg.refine else clamped)
                jobs.append((p, i))
                crops.append(image[Y1:Y2, X1:X2])
        if crops:
            for (p, i), state in zip(jobs, many(crops), strict=True):
                out[p][i] = state
        return out

    # ------------------------------------------------------------------------------------------------ batches

    def _ground_many(self, pairs: list[tuple[np.ndarray, str]]) -> list[Grounding | Exception]:
        g = self.grounder
        if isinstance(g, BatchGrounder):
            out = list(g.ground_many(pairs))
            if len(out) != len(pairs):
                raise RuntimeError(f"grounder.ground_many returned {len(out)} results for {len(pairs)} items")
            return out
        results: list[Grounding | Exception] = []
        for image, query in pairs:
            try:
                results.append(g.ground(image, query))
            except Exception as exc:  # one bad item must not stop the batch
                results.append(exc)
        return results

    def run_batch(
        self, items: Iterable[tuple[Hashable, np.ndarray, str]], batch_size: int = 16, pipelined: bool = True
    ) -> Iterator[tuple[Hashable, GeoSegResult | Exception]]:
        """Run many (key, image, query) items; yields (key, result or the exception that item raised), in order.

        Items are taken ``batch_size`` at a time: the grounder grounds the chunk in one call (``ground_many``,
        concurrent for a served model) when it is a ``BatchGrounder``, then items are segmented image by image
        (items sharing an image array are validated once and processed together). Models are loaded once for the
        whole run. ``pipelined`` (default): stage 1 runs in a background thread, at most :data:`PIPELINE_DEPTH`
        chunks ahead of stages 2-3, so a served grounder and the local segmenter work at the same time; False runs
        the chunks strictly one after the other (same results, same order).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        chunks = _chunked(items, batch_size)
        if not pipelined:
            for chunk in chunks:
                yield from self._segment_chunk(self._ground_chunk(chunk))
            return
        yield from self._run_pipelined(chunks)

    def _run_pipelined(self, chunks: Iterator[list[Any]]) -> Iterator[tuple[Hashable, GeoSegResult | Exception]]:
        """A bounded producer (grounding, one thread) / consumer (segmentation, the caller's thread)."""
        q: queue.Queue = queue.Queue(maxsize=PIPELINE_DEPTH)
        stop = threading.Event()

        def put(obj: Any) -> None:
            while not stop.is_set():
                try:
                    q.put(obj, timeout=0.05)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    put(self._ground_chunk(chunk))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                put(_Failed(exc))
            finally:
                put(_DONE)

        worker = threading.Thread(target=produce, name="geoseg-grounding", daemon=True)
        worker.start()
        try:
            while True:
                got = q.get()
                if got is _DONE:
                    return
                if isinstance(got, _Failed):
                    raise got.exc
                yield from self._segment_chunk(got)
        finally:  # also when the caller stops early: let the producer go, and wait for it
            stop.set()
            worker.join()

    def _ground_chunk(self, chunk: list[Any]) -> _GroundedChunk:
        """Stage 1 for one chunk: validate every item, ground the valid ones in one call."""
        out = _GroundedChunk(chunk)
        checked: dict[int, np.ndarray] = {}
        for idx, item in enumerate(chunk):
            try:
                if not isinstance(item, tuple) or len(item) != 3:
                    raise ValueError("a batch item must be a (key, image, query) tuple")
                _key, image, query = item
                if id(image) not in checked:
                    checked[id(image)] = check_image(image)
                out.ready.append((idx, checked[id(image)], check_query(query)))
            except Exception as exc:
                out.results[idx] = exc
        if out.ready:
            t0 = time.perf_counter()
            try:
                out.groundings = self._ground_many([(img, q) for _i, img, q in out.ready])
            except Exception as exc:  # the whole grounding call failed (e.g. model could not load)
                out.groundings = [exc] * len(out.ready)
            out.per_item = (time.perf_counter() - t0) / len(out.ready)
        return out

    def _segment_chunk(self, grounded: _GroundedChunk) -> Iterator[tuple[Hashable, GeoSegResult | Exception]]:
        """Stages 2-3 for one grounded chunk, image by image (stable within each image); yields in input order."""
        results, ready = grounded.results, grounded.ready
        order = sorted(range(len(ready)), key=lambda j: (id(ready[j][1]), j))
        fine = [j for j in order if not isinstance(grounded.groundings[j], Exception)]
        t1 = time.perf_counter()
        try:  # every crop of the chunk through the SAM3 backbone in batches (segmenter's encode_batch_size)
            pairs = [(ready[j][1], grounded.groundings[j]) for j in fine]
            encoded = dict(zip(fine, self.encode_crops(pairs), strict=True))
        except Exception:  # fall back to one encoding per crop: each item then fails (or not) on its own
            encoded = {}
        per_crop = (time.perf_counter() - t1) / max(1, sum(len(e) for e in encoded.values()))
        for j in order:
            idx, image, query = ready[j]
            g = grounded.groundings[j]
            if isinstance(g, Exception):
                results[idx] = g
                continue
            try:
                st = encoded.get(j) or None
                pre = {"grounding": grounded.per_item, "encode": per_crop * len(st or ())}
                results[idx] = self.segment(image, query, g, pre, st)
            except Exception as exc:
                results[idx] = exc
        for idx, item in enumerate(grounded.chunk):
            key = item[0] if isinstance(item, tuple) and item else None
            yield key, results[idx]


#: How many grounded chunks may wait for segmentation in a pipelined ``run_batch`` (bounds memory and how far
#: stage 1 runs ahead).
PIPELINE_DEPTH = 2


@dataclass
class _GroundedChunk:
    chunk: list[Any]
    results: dict[int, Any] = field(default_factory=dict)
    ready: list[tuple[int, np.ndarray, str]] = field(default_factory=list)
    groundings: list[Any] = field(default_factory=list)
    per_item: float = 0.0


@dataclass(frozen=True)
class _Failed:
    exc: BaseException


_DONE = object()


def _chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def grounder_points(grounding: Grounding, i: int, roi: tuple[int, int, int, int]) -> np.ndarray:
    """The grounder's positive points for box ``i`` (full-image pixels) in crop pixels, those outside the crop
    dropped: (n, 2) float array of (x, y), possibly empty."""
    if i >= len(grounding.points) or not grounding.points[i]:
        return np.zeros((0, 2))
    X1, Y1, X2, Y2 = roi
    pts = np.asarray(grounding.points[i], dtype=np.float64).reshape(-1, 2) - np.array([X1, Y1], dtype=np.float64)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < X2 - X1) & (pts[:, 1] >= 0) & (pts[:, 1] < Y2 - Y1)
    return pts[inside]


def ablation_pipelines(pipeline: GeoSegPipeline) -> dict[str, GeoSegPipeline]:
    """The four Table 3 rows over one set of loaded models: full, no_refine, no_route_a, no_route_b."""
    from geoseg.types import ABLATIONS

    return {name: pipeline.with_config(pipeline.config.ablation(name)) for name in ABLATIONS}
