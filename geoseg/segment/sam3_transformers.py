"""SAM3 through transformers: ``Sam3Model`` (text prompts) and ``Sam3TrackerModel`` (point prompts).

One crop, one vision encoding. In the released ``facebook/sam3`` checkpoint the detector and the tracker share one
Perception-Encoder ViT backbone and differ only in their FPN necks (transformers' ``sam3_tracker`` weight mapping
loads ``detector_model.vision_encoder.backbone.*`` into the tracker's backbone). So this backend:

1. loads both halves completely (a checkpoint that would leave weights random is refused; from a combined
   ``sam3_video`` checkpoint the tracker is assembled, see ``tracker_from_video_checkpoint``), checks that the two
   backbones hold identical weights, then ties them to one module;
2. ``set_image(crop)`` runs the image processor and the backbone ViT once, keeping ``last_hidden_state``;
   ``set_images(crops)`` does the same for several crops in batches of ``encode_batch_size`` per forward (the
   processor resizes every crop to the model's fixed square input, so crops of any size stack);
3. ``predict_text`` feeds the detector neck's output as ``vision_embeds=`` (``Sam3VisionEncoderOutput``) to
   ``Sam3Model.forward`` (``predict_text_many``: several crops and phrases in one forward); ``predict_points`` feeds
   the tracker neck's output as ``image_embeddings=`` to ``Sam3TrackerModel.forward``.

**Route B decision (text prompt).** A query's score is ``sigmoid(pred_logit) * sigmoid(presence_logit)``, the score
Meta's ``Sam3Processor._forward_grounding`` and transformers' ``post_process_instance_segmentation`` both use. The
defaults here (``text_instances="union"``, ``text_score_threshold=0.3``, ``presence_threshold=0.5``) are the paper
profile's: the mask is the union of every instance whose score is above 0.3, and empty when the presence head says the
concept is absent (``sigmoid(presence) < 0.5``), so that Eq. 7 falls back to Route A alone instead of intersecting it
with a junk mask. Sources for the threshold: transformers 5.23 ``Sam3Processor.post_process_instance_segmentation``
defaults to ``threshold=0.3`` on exactly this score; Meta's ``sam3.model.sam3_image_processor.Sam3Processor`` uses
``confidence_threshold=0.5``; the public GeoSeg code (``Tankowa/GeoSeg``,
``CLIP_Surgery/process_annotations_clip_surverg.py``) runs Ultralytics' ``SAM3SemanticPredictor`` with ``conf=0.25``
(the value of Ultralytics' own usage example) and unions all returned masks. We keep 0.3: it is the default of the
library we call, on the same score, and lies between the other two; it is an option. The separate presence gate is
our reading of the presence head (a binary "is the concept in the image" classifier); none of the references gates on
it separately (they only fold it into the product), so ``presence_threshold=None`` turns the gate off.
``text_instances="best"`` keeps only the top instance (the old behaviour).

**Route A decision (point prompts), ``point_mode``.** ``"auto"`` (paper profile): one point -> ``multimask_output=True``
and the mask with the best predicted IoU (SAM's three outputs resolve a single click's ambiguity); several points ->
one prompt with all of them and ``multimask_output=False`` (Meta, ``sam1_task_predictor.SAM3InteractiveImagePredictor
.predict``: "for non-ambiguous prompts, such as multiple input prompts, multimask_output=False can give better
results"). ``"per_point_union"``: every point is its own single-point prompt (all in one decoder forward, one mask
each, ``multimask_output=False``) and the masks are unioned; this is what the public GeoSeg code does (Ultralytics'
``SAM.predict(points=[[x, y], ...], labels=[1, ...])`` treats a flat point list as one prompt per point, its docs'
"multiple points" example, and the script unions the returned masks). The paper profile uses ``"auto"``: the
paper's Route A prompts SAM3 with the keypoint set P of one target (Eq. 4), and Top-K NMS keypoints all lie on that
target, which is the "multiple input prompts, one object" case Meta's guidance is about; ``per_point_union`` is there
to reproduce the public code's numbers.

**Tracker features and ``no_memory_embedding``.** Meta's image path (``sam1_task_predictor.set_image``) takes the
tracker neck's levels after ``SAM3VLBackbone(scalp=1)`` has discarded the lowest-resolution (0.5x, 36x36) one, runs
``conv_s0``/``conv_s1`` on the two high-resolution levels and adds ``no_mem_embed`` to ``vision_feats[-1]``, the 1x
(72x72) level that becomes the image embedding. transformers 5.23 ``Sam3TrackerVideoModel.get_image_features`` also
drops the 0.5x level first (``fpn_hidden_states[:-1]``); ``Sam3TrackerModel.get_image_features`` keeps all four
levels, so ``Sam3TrackerModel.get_image_embeddings`` adds ``no_memory_embedding`` to the 0.5x map and then drops that
map (``zip`` with the three ``backbone_feature_sizes``): the embedding is never applied. This backend follows Meta
(``tracker_maps``): the 72x72 map gets it. With the released weights this changes the point-prompt masks wherever
``no_mem_embed`` is non-zero; a test pins the level.

The necks are a few convolutions; the ViT is where the time goes. ``encoder_calls`` counts backbone forwards (a
forward hook), so tests and the benchmark can check "exactly one per crop" (one per batch with ``set_images``). With
``share_encoding=False`` each route instead encodes the crop with its own model (the naive use of the API: two
encodings per crop), kept for the benchmark's comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.devices import resolve_device
from geoseg.types import BackendSpec


def _check_crop(crop: np.ndarray) -> np.ndarray:
    a = np.asarray(crop)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"crop must be an (h, w, 3) RGB array with h, w >= 1, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"crop must be uint8 RGB, got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def _resolve_dtype(name: str | None):
    import torch

    table = {None: torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16; got {name!r}")
    return table[name]


def _load_error(what: str, source: str, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load the SAM3 {what} from {source!r}: {exc}. Pass a local directory saved with "
        f"save_pretrained, or a hub id with network access (facebook/sam3 is gated: accept its licence on the hub, "
        f"then `hf download facebook/sam3`); HF_HUB_OFFLINE=1 forbids downloads."
    )


def _check_complete(what: str, source: str, info: dict[str, Any]) -> None:
    """Refuse a model whose checkpoint left weights randomly initialised: its masks would be silently meaningless."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise RuntimeError(
            f"the SAM3 {what} loaded from {source!r} is missing {len(missing)} weights (e.g. {missing[:3]}); "
            "they would be random. Point the segmenter at a checkpoint in this class's format "
            "(options.tracker_model for the point-prompt half)."
        )


def _is_video_checkpoint(source: str) -> bool:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source).model_type == "sam3_video"
    except (OSError, ValueError):
        return False


def tracker_from_video_checkpoint(source: str, dtype: Any = None) -> tuple[Any, dict[str, Any]]:
    """A ``Sam3TrackerModel`` assembled from a ``sam3_video`` checkpoint (detector + tracker in one repo).

    ``Sam3TrackerModel.from_pretrained`` maps only part of such a checkpoint in transformers 5.23 (measured on a tiny
    ``Sam3VideoModel`` save: the prompt encoder and mask decoder stay random). ``Sam3VideoModel`` loads its own
    checkpoint completely, so the tracker is assembled from it: the point decoder and prompt encoder from
    ``tracker_model``, the FPN neck from ``tracker_neck`` and the ViT backbone from the detector, which is exactly the
    split of the released model. Returns the tracker and a loading-info dict (``missing_keys`` must end up empty).
    """
    from transformers import Sam3TrackerModel, Sam3VideoModel

    video = Sam3VideoModel.from_pretrained(source, dtype=dtype)
    tracker = Sam3TrackerModel(video.config).to(dtype=next(video.parameters()).dtype)
    state = dict(video.tracker_model.state_dict())
    state.update({f"vision_encoder.neck.{k}": v for k, v in video.tracker_neck.state_dict().items()})
    backbone = video.detector_model.vision_encoder.backbone.state_dict()
    state.update({f"vision_encoder.backbone.{k}": v for k, v in backbone.items()})
    wanted = tracker.state_dict().keys()
    result = tracker.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    del video
    return tracker.eval(), {"missing_keys": list(result.missing_keys), "assembled_from": "sam3_video"}


#: Route B defaults of the paper profile (see the module docstring for the sources).
TEXT_SCORE_THRESHOLD = 0.3
PRESENCE_THRESHOLD = 0.5
TEXT_INSTANCES = ("union", "best")
POINT_MODES = ("auto", "per_point_union")


@dataclass
class Sam3ImageState:
    """The encoding of one crop: backbone tokens plus lazily built neck features for each head."""

    crop_size: tuple[int, int]  # (h, w) of the crop
    grid: tuple[int, int]  # backbone token grid (rows, cols)
    hidden: Any = None  # backbone last_hidden_state, (1, rows*cols, C); None in naive mode
    pixel_values: Any = None  # kept only in naive mode (share_encoding=False)
    detector_embeds: Any = None
    tracker_embeds: Any = None
    scores: dict[str, float] = field(default_factory=dict)  # scores of the last prompts (see predict_*)
    calls: dict[str, Any] = field(default_factory=dict)  # how the last prompts were run (for tests and audits)


class Sam3TransformersSegmenter:
    """SAM3 segmenter on transformers classes; see the module docstring."""

    def __init__(
        self,
        detector: Any,
        processor: Any,
        tracker: Any,
        tracker_processor: Any,
        *,
        device: str = "cpu",
        mask_threshold: float = 0.5,
        text_score_threshold: float = TEXT_SCORE_THRESHOLD,
        presence_threshold: float | None = PRESENCE_THRESHOLD,
        text_instances: str = "union",
        point_mode: str = "auto",
        encode_batch_size: int = 8,
        share_encoding: bool = True,
        meaningless: bool = False,
        source: str = "",
    ) -> None:
        import torch

        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold is a probability in (0, 1), got {mask_threshold}")
        if not 0.0 <= text_score_threshold < 1.0:
            raise ValueError(f"text_score_threshold must lie in [0, 1), got {text_score_threshold}")
        if presence_threshold is not None and not 0.0 <= presence_threshold < 1.0:
            raise ValueError(f"presence_threshold must lie in [0, 1) or be None (no gate), got {presence_threshold}")
        if text_instances not in TEXT_INSTANCES:
            raise ValueError(f"text_instances must be one of {list(TEXT_INSTANCES)}, got {text_instances!r}")
        if point_mode not in POINT_MODES:
            raise ValueError(f"point_mode must be one of {list(POINT_MODES)}, got {point_mode!r}")
        if not isinstance(encode_batch_size, int) or isinstance(encode_batch_size, bool) or encode_batch_size < 1:
            raise ValueError(f"encode_batch_size must be an integer >= 1, got {encode_batch_size!r}")
        self.detector = detector.eval()
        self.processor = processor
        self.tracker = tracker.eval()
        self.tracker_processor = tracker_processor
        self.device = device
        self.mask_threshold = float(mask_threshold)
        self._mask_logit_threshold = math.log(mask_threshold / (1.0 - mask_threshold))
        self.text_score_threshold = float(text_score_threshold)
        self.presence_threshold = None if presence_threshold is None else float(presence_threshold)
        self.text_instances = text_instances
        self.point_mode = point_mode
        self.encode_batch_size = encode_batch_size
        self.share_encoding = bool(share_encoding)
        self.meaningless = meaningless
        self.source = source
        self.dtype = next(self.detector.parameters()).dtype

        det_size = dict(processor.image_processor.size)
        trk_size = dict(tracker_processor.image_processor.size)
        if det_size != trk_size:
            raise ValueError(f"detector and tracker processors resize differently ({det_size} vs {trk_size})")
        det_bb = self.detector.vision_encoder.backbone
        trk_bb = self.tracker.vision_encoder.backbone
        a, b = det_bb.state_dict(), trk_bb.state_dict()
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k].to(a[k].device)) for k in a):
            raise ValueError(
                "the SAM3 detector and tracker backbones hold different weights; SAM3 shares one ViT backbone "
                "between them (load both halves from the same checkpoint, e.g. facebook/sam3)"
            )
        self.tracker.vision_encoder.backbone = det_bb  # one module, one set of weights, one forward per crop
        self.backbone = det_bb
        self.patch_size = int(self.detector.config.vision_config.backbone_config.patch_size)
        self.encoder_calls = 0
        self.backbone.register_forward_hook(self._count_encoder_call)

    def _count_encoder_call(self, module: Any, args: Any, output: Any) -> None:
        self.encoder_calls += 1

    @classmethod
    def from_spec(cls, spec: BackendSpec, *, meaningless: bool = False) -> Sam3TransformersSegmenter:
        from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

        if not spec.model:
            raise ValueError("the sam3-transformers segmenter needs spec.model (a hub id or a local directory)")
        opts = dict(spec.options)
        tracker_src = opts.pop("tracker_model", None) or spec.model
        device = resolve_device(opts.pop("device", "auto"))
        dtype = _resolve_dtype(opts.pop("dtype", None))
        opts.pop("require_gpu", None)
        known = {
            "mask_threshold",
            "text_score_threshold",
            "presence_threshold",
            "text_instances",
            "point_mode",
            "encode_batch_size",
            "share_encoding",
        }
        unknown = set(opts) - known
        if unknown:
            raise ValueError(f"unknown sam3-transformers options {sorted(unknown)}; known: {sorted(known)}")
        det_what, trk_what = "detector (Sam3Model)", "tracker (Sam3TrackerModel)"
        try:
            detector, det_info = Sam3Model.from_pretrained(spec.model, dtype=dtype, output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise _load_error(det_what, spec.model, exc) from exc
        _check_complete(det_what, spec.model, det_info)
        try:
            tracker, trk_info = Sam3TrackerModel.from_pretrained(tracker_src, dtype=dtype, output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise _load_error(trk_what, tracker_src, exc) from exc
        if trk_info.get("missing_keys") and _is_video_checkpoint(tracker_src):
            tracker, trk_info = tracker_from_video_checkpoint(tracker_src, dtype)
        _check_complete(trk_what, tracker_src, trk_info)
        try:
            processor = Sam3Processor.from_pretrained(spec.model)
            tracker_processor = Sam3TrackerProcessor.from_pretrained(tracker_src)
        except (OSError, ValueError) as exc:
            raise _load_error("processors", f"{spec.model} / {tracker_src}", exc) from exc
        return cls(
            detector.to(device),
            processor,
            tracker.to(device),
            tracker_processor,
            device=device,
            meaningless=meaningless,
            source=spec.model,
            **opts,
        )

    # ----------------------------------------------------------------------------------------------- encoding

    def _pixel_values(self, crops: list[np.ndarray]):
        # input_data_format: a crop 1 or 3 px tall would otherwise be guessed channels-first.
        inputs = self.processor.image_processor(images=crops, input_data_format="channels_last", return_tensors="pt")
        return inputs["pixel_values"].to(self.device, self.dtype)

    def set_image(self, crop: np.ndarray) -> Sam3ImageState:
        """Preprocess the crop and run the ViT backbone once; both routes reuse the result."""
        return self.set_images([crop])[0]

    def set_images(self, crops: list[np.ndarray]) -> list[Sam3ImageState]:
        """``set_image`` for several crops, ``encode_batch_size`` crops per backbone forward."""
        import torch

        checked = [np.array(_check_crop(c), copy=True) for c in crops]  # private, writable copies for the processor
        states: list[Sam3ImageState] = []
        for start in range(0, len(checked), self.encode_batch_size):
            chunk = checked[start : start + self.encode_batch_size]
            px = self._pixel_values(chunk)
            grid = (px.shape[-2] // self.patch_size, px.shape[-1] // self.patch_size)
            if not self.share_encoding:
                states += [Sam3ImageState(c.shape[:2], grid, pixel_values=px[i : i + 1]) for i, c in enumerate(chunk)]
                continue
            with torch.inference_mode():
                hidden = self.backbone(px).last_hidden_state
            states += [Sam3ImageState(c.shape[:2], grid, hidden=hidden[i : i + 1]) for i, c in enumerate(chunk)]
        return states

    def _spatial(self, hidden, grid: tuple[int, int]):
        rows, cols = grid
        return hidden.view(hidden.shape[0], rows, cols, -1).permute(0, 3, 1, 2)

    def _detector_embeds_batch(self, states: list[Sam3ImageState]):
        """One ``Sam3VisionEncoderOutput`` for the stacked states (the neck runs once for all of them)."""
        import torch
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        if len(states) == 1 and states[0].detector_embeds is not None:
            return states[0].detector_embeds
        hidden = torch.cat([s.hidden for s in states])
        with torch.inference_mode():
            fpn, pos = self.detector.vision_encoder.neck(self._spatial(hidden, states[0].grid))
        out = Sam3VisionEncoderOutput(last_hidden_state=hidden, fpn_hidden_states=fpn, fpn_position_encoding=pos)
        if len(states) == 1:
            states[0].detector_embeds = out
        return out

    def detector_embeds(self, state: Sam3ImageState):
        """``Sam3VisionEncoderOutput`` for ``Sam3Model.forward(vision_embeds=...)`` from the shared backbone."""
        return self._detector_embeds_batch([state])

    def tracker_maps(self, fpn: Any) -> list[Any]:
        """The tracker's image embeddings from its neck's FPN levels (NCHW), as Meta's image predictor builds them.

        Drops the 0.5x level (Meta: ``SAM3VLBackbone(scalp=1)``; transformers: ``Sam3TrackerVideoModel
        .get_image_features``), projects the two high-resolution levels with ``conv_s0``/``conv_s1`` and adds
        ``no_memory_embedding`` to the lowest kept level (the 72x72 image embedding at 1008 px), see the module
        docstring: transformers' ``Sam3TrackerModel.get_image_embeddings`` adds it to the dropped 0.5x map instead.
        """
        import torch

        sizes = [tuple(s) for s in self.tracker.backbone_feature_sizes]
        maps = list(fpn)[: len(sizes)]  # the neck's last level (0.5x) is not used by the SAM heads
        with torch.inference_mode():
            maps[0] = self.tracker.mask_decoder.conv_s0(maps[0])
            maps[1] = self.tracker.mask_decoder.conv_s1(maps[1])
            # Meta (sam1_task_predictor.set_image): vision_feats[-1] += no_mem_embed on the 72x72 level, after
            # scalp=1 dropped the 36x36 one. transformers 5.23 Sam3TrackerModel adds it before dropping (lost).
            maps[-1] = maps[-1] + self.tracker.no_memory_embedding.view(1, -1, 1, 1)
        got = [tuple(m.shape[-2:]) for m in maps]
        if got != sizes:
            raise RuntimeError(f"tracker feature maps {got} differ from the config's backbone_feature_sizes {sizes}")
        return maps

    def tracker_embeds(self, state: Sam3ImageState):
        """The tracker's image embeddings for one crop (see ``tracker_maps``), built once per state."""
        import torch

        if state.tracker_embeds is None:
            with torch.inference_mode():
                if self.share_encoding:
                    fpn, _pos = self.tracker.vision_encoder.neck(self._spatial(state.hidden, state.grid))
                else:  # the naive path: the tracker encodes the crop itself
                    fpn = self.tracker.vision_encoder(state.pixel_values).fpn_hidden_states
            state.tracker_embeds = self.tracker_maps(fpn)
        return state.tracker_embeds

    # ----------------------------------------------------------------------------------------------- prompts

    def predict_points(self, state: Sam3ImageState, points: np.ndarray) -> np.ndarray:
        """Positive point prompts (k, 2) as (x, y) crop pixels -> (h, w) bool mask (``point_mode``, module docstring).

        ``state.calls["point"]`` records the decoder call (``multimask_output``, number of prompts, masks returned,
        the point labels sent); ``state.scores["point"]`` the predicted IoU of the returned mask (the mean over
        points for the union).
        """
        pts = self._points(points)
        if self.point_mode == "per_point_union" and len(pts) > 1:  # one prompt (object) per point, one point each
            return self._decode(state, [[[p] for p in pts.tolist()]], [[[1] for _ in range(len(pts))]], False)
        return self._decode(state, [[pts.tolist()]], [[[1] * len(pts)]], len(pts) == 1)

    def predict_clicks(self, state: Sam3ImageState, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """An annotator's clicks: points (k, 2) in crop pixels with labels 1 (foreground) / 0 (background), all one
        prompt for one object, as SAM's interactive use; several masks only for a single positive click."""
        pts = self._points(points)
        lab = np.asarray(labels).reshape(-1).astype(int)
        if len(lab) != len(pts) or not set(lab.tolist()) <= {0, 1}:
            raise ValueError(f"predict_clicks needs one label (0 or 1) per point, got {lab.tolist()} for {len(pts)}")
        if not lab.any():
            raise ValueError("predict_clicks needs at least one foreground (label 1) point")
        return self._decode(state, [[pts.tolist()]], [[lab.tolist()]], len(pts) == 1)

    @staticmethod
    def _points(points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            raise ValueError("predict_points needs at least one point")
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN or infinite values")
        return pts

    def _decode(self, state: Sam3ImageState, prompts: list, labels: list, multimask: bool) -> np.ndarray:
        """One tracker-decoder forward on the state's embeddings: the union of each prompt's best mask."""
        import torch

        h, w = state.crop_size
        enc = self.tracker_processor(
            input_points=prompts, input_labels=labels, original_sizes=[[h, w]], return_tensors="pt"
        )
        with torch.inference_mode():
            out = self.tracker(
                image_embeddings=self.tracker_embeds(state),
                input_points=enc["input_points"].to(self.device, self.dtype),
                input_labels=enc["input_labels"].to(self.device),
                multimask_output=multimask,
            )
            iou = out.iou_scores[0].float()  # (objects, masks per object)
            best = torch.argmax(iou, dim=-1)  # the single mask when multimask is off
            rows = torch.arange(iou.shape[0])
            low = out.pred_masks[0][rows, best].float()  # (objects, h', w') logits
            masks = self.tracker_processor.post_process_masks(
                [low[:, None]], [[h, w]], mask_threshold=self._mask_logit_threshold, binarize=True
            )[0][:, 0]
        state.calls["point"] = {
            "multimask_output": multimask,
            "prompts": int(iou.shape[0]),
            "masks_per_prompt": int(out.pred_masks.shape[2]),
            "labels": [lab for prompt in labels[0] for lab in prompt],
        }
        state.scores["point"] = float(iou[rows, best].mean())
        return masks.any(dim=0).cpu().numpy().astype(bool)

    def predict_text(self, state: Sam3ImageState, phrase: str) -> np.ndarray:
        """A noun phrase -> the union of SAM3's instances above the score threshold, presence-gated (module
        docstring). ``state.scores``: ``text`` (best instance score), ``presence``, ``text_instances`` (kept)."""
        return self.predict_text_many([state], [phrase])[0]

    def predict_text_many(self, states: list[Sam3ImageState], phrases: list[str]) -> list[np.ndarray]:
        """``predict_text`` for several (crop, phrase) pairs in one detector forward."""
        import torch

        if len(states) != len(phrases):
            raise ValueError(f"predict_text_many needs one phrase per state, got {len(phrases)} for {len(states)}")
        if not states:
            return []
        for phrase in phrases:
            if not isinstance(phrase, str) or not phrase.strip():
                raise ValueError("predict_text needs a non-empty phrase")
        text = self.processor(text=[p.strip() for p in phrases], return_tensors="pt")
        kwargs = {
            "input_ids": text["input_ids"].to(self.device),
            "attention_mask": text["attention_mask"].to(self.device),
        }
        with torch.inference_mode():
            if self.share_encoding:
                out = self.detector(vision_embeds=self._detector_embeds_batch(states), **kwargs)
            else:
                out = self.detector(pixel_values=torch.cat([s.pixel_values for s in states]), **kwargs)
            return [self._text_mask(out, i, state) for i, state in enumerate(states)]

    def _text_mask(self, out: Any, i: int, state: Sam3ImageState) -> np.ndarray:
        """Route B's decision for item ``i`` of a detector output (scores as transformers' post-processing)."""
        import torch

        h, w = state.crop_size
        presence = 1.0
        if out.presence_logits is not None:
            presence = float(out.presence_logits[i].float().sigmoid().reshape(-1)[0])
        scores = out.pred_logits[i].float().sigmoid() * presence
        absent = self.presence_threshold is not None and presence < self.presence_threshold
        keep = scores > self.text_score_threshold
        if self.text_instances == "best":
            keep = keep & (torch.arange(len(scores), device=scores.device) == torch.argmax(scores))
        if absent:
            keep = torch.zeros_like(keep)
        state.scores.update(text=float(scores.max()), presence=presence, text_instances=int(keep.sum()))
        state.calls["text"] = {"absent": absent, "kept": int(keep.sum()), "queries": int(len(scores))}
        if not bool(keep.any()):
            return np.zeros((h, w), dtype=bool)
        probs = out.pred_masks[i][keep].float().sigmoid()[None]  # (1, n, h', w'), as post_process_* resizes
        up = torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)[0]
        return (up > self.mask_threshold).any(dim=0).cpu().numpy()
