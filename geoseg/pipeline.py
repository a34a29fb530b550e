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

import time
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import numpy as np

from geoseg.box import clamp_box, refine_box, roi_from_box
from geoseg.keypoints import topk_nms_keypoints
from geoseg.masks import fuse_masks, paste_back, validity
from geoseg.protocols import Grounder, Matcher, Segmenter
from geoseg.types import TINY_MODEL_WARNING, BackendSpec, Box, GeoSegConfig, GeoSegResult, Grounding

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
        self._grounder = grounder
        self._matcher = matcher
        self._segmenter = segmenter

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
    def is_meaningless(self) -> bool:
        """True when any model is a tiny random one: the masks exercise the code and mean nothing.

        A model already built (or injected) answers for itself (``meaningless`` / ``is_tiny``); a model not built yet
        is judged by its spec (kind ``tiny``). The ``tiny`` profile is always meaningless.
        """
        if self.config.profile == "tiny":
            return True
        roles = [(self._grounder, self.config.grounder), (self._segmenter, self.config.segmenter)]
        if self.config.route_a:
            roles.append((self._matcher, self.config.matcher))
        for model, spec in roles:
            if model is None:
                if spec.kind == "tiny":
                    return True
            elif getattr(model, "meaningless", False) or getattr(model, "is_tiny", False):
                return True
        return False

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
        """Stages 2-3 for a grounding already obtained (the batch path grounds many items first).

        ``states``: segmenter encodings of box ``i``'s crop already computed (``encode_crops``, batched); without
        them the crops of a multi-box grounding are encoded together when the segmenter has ``set_images``."""
        image = check_image(image)
        query = check_query(query)
        if not isinstance(grounding, Grounding):
            raise ValueError(f"grounding must be a Grounding, got {type(grounding).__name__}")
        cfg = self.config
        H, W = image.shape[:2]
        if grounding.boxes:  # build the models before the clock starts: load time is not stage time
            _ = self.segmenter, (self.matcher if cfg.route_a else None)
        clock = _Clock()
        clock.timings.update(timings or {})
        t_start = time.perf_counter()
        if states is None and len(grounding.boxes) > 1:
            states = self.encode_crops([(image, grounding)])[0]
            clock.add("encode", t_start)
        empty = np.zeros((H, W), dtype=bool)
        note = TINY_MODEL_WARNING if self.is_meaningless else None

        def finish(**kw: Any) -> GeoSegResult:
            clock.timings["total"] = clock.timings.get("grounding", 0.0) + (time.perf_counter() - t_start)
            return GeoSegResult(grounding=grounding, model_version=self.model_version, timings=clock.timings, **kw)

        if not grounding.boxes:
            reason = grounding.error or "no target: the grounder returned no box"
            return finish(mask=empty, route="empty", reason=reason, note=note)

        fused_all = empty.copy()
        m_pt_all = empty.copy() if cfg.route_a else None
        m_txt_all = empty.copy() if cfg.route_b else None
        v_pt_any = v_txt_any = False
        keypoints: list[np.ndarray] = []
        routes: list[str] = []
        reasons: list[str] = []
        warnings: list[str] = []
        first: dict[str, Any] = {}
        for i, box in enumerate(grounding.boxes):
            t = time.perf_counter()
            clamped = clamp_box(box, W, H)
            if clamped.width <= 0 or clamped.height <= 0:
                routes.append("empty")
                reasons.append(f"box {i} {box.as_tuple()} lies outside the {W}x{H} image")
                clock.add("crop", t)
                continue
            refined: Box = refine_box(box, W, H, cfg.alpha, cfg.beta) if cfg.refine else clamped
            roi = roi_from_box(refined)
            X1, Y1, X2, Y2 = roi
            crop = image[Y1:Y2, X1:X2]
            if not first:
                first = {"box": box, "refined_box": refined, "roi": roi}
            t = clock.add("crop", t)
            state = states[i] if states and i in states else self.segmenter.set_image(crop)
            t = clock.add("encode", t)

            m_pt = m_txt = None
            v_pt = v_txt = False
            box_phrase = grounding.phrase_of(i).strip() or query
            if cfg.route_a:
                given = grounder_points(grounding, i, roi)  # Think2Seg-RS positive points, crop pixels
                kps = np.zeros((0, 2))
                why = f"box {i}: route A found no keypoint with similarity >= tau={cfg.tau}"
                if cfg.route_a_points != "grounder" or not len(given):
                    phi = self.matcher.similarity_map(crop, box_phrase)
                    t = clock.add("similarity", t)
                    if np.isfinite(phi).all():
                        kps = topk_nms_keypoints(phi, k=cfg.k, tau=cfg.tau, radius=cfg.nms_radius)
                    else:  # design §2: a NaN/inf map gives no keypoint; say why instead of raising
                        why = f"box {i}: route A invalid: the similarity map has NaN/inf values"
                        warnings.append(why)
                if cfg.route_a_points != "clip" and len(given):
                    kps = given if cfg.route_a_points == "grounder" else np.concatenate([given, kps])
                t = clock.add("keypoints", t)
                if len(kps):
                    m_pt = paste_back(self.segmenter.predict_points(state, kps), roi, W, H)
                    v_pt = validity(m_pt, roi, cfg.gamma)
                    keypoints.append(kps + np.array([X1, Y1], dtype=np.float64))
                else:
                    m_pt = np.zeros((H, W), dtype=bool)
                    reasons.append(why)
                t = clock.add("route_a", t)
            if cfg.route_b:
                m_txt = paste_back(self.segmenter.predict_text(state, box_phrase), roi, W, H)
                v_txt = validity(m_txt, roi, cfg.gamma)
                t = clock.add("route_b", t)
            fused, route = fuse_masks(m_pt, m_txt, v_pt, v_txt)
            routes.append(route)
            if route == "empty":
                reasons.append(f"box {i}: no valid route (mask area below gamma={cfg.gamma} of the RoI)")
            np.logical_or(fused_all, fused, out=fused_all)
            if m_pt is not None and m_pt_all is not None:
                np.logical_or(m_pt_all, m_pt, out=m_pt_all)
            if m_txt is not None and m_txt_all is not None:
                np.logical_or(m_txt_all, m_txt, out=m_txt_all)
            v_pt_any |= v_pt
            v_txt_any |= v_txt
            clock.add("fusion", t)

        route = next((r for r in routes if r != "empty"), "empty")
        notes = ([note] if note else []) + warnings
        if len(grounding.boxes) > 1:
            notes.append(f"{len(grounding.boxes)} boxes, mask = union of per-box masks; routes: {', '.join(routes)}")
        return finish(
            mask=fused_all,
            route=route,
            keypoints=np.concatenate(keypoints) if keypoints else np.zeros((0, 2)),
            mask_point=m_pt_all,
            mask_text=m_txt_all,
            valid_point=v_pt_any,
            valid_text=v_txt_any,
            reason=None if route != "empty" else "; ".join(reasons) or "no valid route",
            note="; ".join(notes) or None,
            **first,
        )

    # ------------------------------------------------------------------------------------------------ batches

    def encode_crops(self, pairs: list[tuple[np.ndarray, Grounding]]) -> list[dict[int, Any]]:
        """The segmenter encodings of every box crop of several (image, grounding) pairs, batched through
        ``segmenter.set_images`` (``encode_batch_size`` crops per forward); a dict per pair, box index -> state.
        Empty dicts when the segmenter has no ``set_images``, or for boxes outside their image."""
        many = getattr(self.segmenter, "set_images", None)
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

    def _ground_many(self, pairs: list[tuple[np.ndarray, str]]) -> list[Grounding | Exception]:
        g = self.grounder
        many = getattr(g, "ground_many", None)
        if callable(many):
            out = list(many(pairs))
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
        self, items: Iterable[tuple[Hashable, np.ndarray, str]], batch_size: int = 16
    ) -> Iterator[tuple[Hashable, GeoSegResult | Exception]]:
        """Run many (key, image, query) items; yields (key, result or the exception that item raised), in order.

        Items are taken ``batch_size`` at a time: the grounder grounds the chunk in one call (``ground_many``,
        concurrent for a served model) when it has one, then items are segmented image by image (items sharing an
        image array are validated once and processed together). Models are loaded once for the whole run.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        chunk: list[tuple[Hashable, Any, Any]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= batch_size:
                yield from self._run_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk)

    def _run_chunk(self, chunk: list[tuple[Hashable, Any, Any]]) -> Iterator[tuple[Hashable, GeoSegResult | Exception]]:
        results: dict[int, GeoSegResult | Exception] = {}
        checked: dict[int, np.ndarray] = {}
        ready: list[tuple[int, np.ndarray, str]] = []
        for idx, item in enumerate(chunk):
            try:
                if not isinstance(item, tuple) or len(item) != 3:
                    raise ValueError("a batch item must be a (key, image, query) tuple")
                _key, image, query = item
                if id(image) not in checked:
                    checked[id(image)] = check_image(image)
                ready.append((idx, checked[id(image)], check_query(query)))
            except Exception as exc:
                results[idx] = exc
        if ready:
            t0 = time.perf_counter()
            try:
                groundings = self._ground_many([(img, q) for _i, img, q in ready])
            except Exception as exc:  # the whole grounding call failed (e.g. model could not load)
                groundings = [exc] * len(ready)
            per_item = (time.perf_counter() - t0) / len(ready)
            # Segment image by image (stable within each image).
            order = sorted(range(len(ready)), key=lambda j: (id(ready[j][1]), j))
            fine = [j for j in order if not isinstance(groundings[j], Exception)]
            t1 = time.perf_counter()
            try:  # every crop of the chunk through the SAM3 backbone in batches (segmenter's encode_batch_size)
                encoded = dict(zip(fine, self.encode_crops([(ready[j][1], groundings[j]) for j in fine]), strict=True))
            except Exception:  # fall back to one encoding per crop: each item then fails (or not) on its own
                encoded = {}
            n_crops = max(1, sum(len(e) for e in encoded.values()))
            per_crop = (time.perf_counter() - t1) / n_crops
            for j in order:
                idx, image, query = ready[j]
                g = groundings[j]
                if isinstance(g, Exception):
                    results[idx] = g
                    continue
                try:
                    st = encoded.get(j) or None
                    pre = {"grounding": per_item, "encode": per_crop * len(st or ())}
                    results[idx] = self.segment(image, query, g, pre, st)
                except Exception as exc:
                    results[idx] = exc
        for idx, item in enumerate(chunk):
            key = item[0] if isinstance(item, tuple) and item else None
            yield key, results[idx]


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
