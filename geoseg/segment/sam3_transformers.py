"""SAM3 through transformers: ``Sam3Model`` (text prompts) and ``Sam3TrackerModel`` (point prompts).

One crop, one vision encoding. In the released ``facebook/sam3`` checkpoint the detector and the tracker share one
Perception-Encoder ViT backbone and differ only in their FPN necks (transformers' ``sam3_tracker`` weight mapping
loads ``detector_model.vision_encoder.backbone.*`` into the tracker's backbone). So this backend:

1. loads both halves completely (a checkpoint that would leave weights random is refused; from a combined
   ``sam3_video`` checkpoint the tracker is assembled, see ``tracker_from_video_checkpoint``), checks that the two
   backbones hold identical weights, then ties them to one module;
2. ``set_image(crop)`` runs the image processor and the backbone ViT once, keeping ``last_hidden_state``;
3. ``predict_text`` feeds the detector neck's output as ``vision_embeds=`` (``Sam3VisionEncoderOutput``) to
   ``Sam3Model.forward``; ``predict_points`` feeds the tracker neck's output, prepared exactly like
   ``Sam3TrackerModel.get_image_embeddings``, as ``image_embeddings=`` to ``Sam3TrackerModel.forward``.

The necks are a few convolutions; the ViT is where the time goes. ``encoder_calls`` counts backbone forwards (a
forward hook), so tests and the benchmark can check "exactly one per crop". With ``share_encoding=False`` each route
instead passes ``pixel_values`` to its own model (the naive use of the API: two encodings per crop), kept for the
benchmark's comparison.
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


@dataclass
class Sam3ImageState:
    """The encoding of one crop: backbone tokens plus lazily built neck features for each head."""

    crop_size: tuple[int, int]  # (h, w) of the crop
    grid: tuple[int, int]  # backbone token grid (rows, cols)
    hidden: Any = None  # backbone last_hidden_state, (1, rows*cols, C); None in naive mode
    pixel_values: Any = None  # kept only in naive mode (share_encoding=False)
    detector_embeds: Any = None
    tracker_embeds: Any = None
    scores: dict[str, float] = field(default_factory=dict)  # score of the last mask per route


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
        text_score_threshold: float = 0.0,
        text_instances: str = "best",
        share_encoding: bool = True,
        meaningless: bool = False,
        source: str = "",
    ) -> None:
        import torch

        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold is a probability in (0, 1), got {mask_threshold}")
        if not 0.0 <= text_score_threshold < 1.0:
            raise ValueError(f"text_score_threshold must lie in [0, 1), got {text_score_threshold}")
        if text_instances not in ("best", "union"):
            raise ValueError(f"text_instances must be 'best' or 'union', got {text_instances!r}")
        self.detector = detector.eval()
        self.processor = processor
        self.tracker = tracker.eval()
        self.tracker_processor = tracker_processor
        self.device = device
        self.mask_threshold = float(mask_threshold)
        self._mask_logit_threshold = math.log(mask_threshold / (1.0 - mask_threshold))
        self.text_score_threshold = float(text_score_threshold)
        self.text_instances = text_instances
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
        known = {"mask_threshold", "text_score_threshold", "text_instances", "share_encoding"}
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

    def set_image(self, crop: np.ndarray) -> Sam3ImageState:
        """Preprocess the crop and run the ViT backbone once; both routes reuse the result."""
        import torch

        crop = np.array(_check_crop(crop), copy=True)  # a private, writable copy for the processor
        h, w = crop.shape[:2]
        inputs = self.processor.image_processor(images=crop, return_tensors="pt")
        px = inputs["pixel_values"].to(self.device, self.dtype)
        grid = (px.shape[-2] // self.patch_size, px.shape[-1] // self.patch_size)
        if not self.share_encoding:
            return Sam3ImageState(crop_size=(h, w), grid=grid, pixel_values=px)
        with torch.inference_mode():
            hidden = self.backbone(px).last_hidden_state
        return Sam3ImageState(crop_size=(h, w), grid=grid, hidden=hidden)

    def _spatial(self, state: Sam3ImageState):
        rows, cols = state.grid
        return state.hidden.view(state.hidden.shape[0], rows, cols, -1).permute(0, 3, 1, 2)

    def detector_embeds(self, state: Sam3ImageState):
        """``Sam3VisionEncoderOutput`` for ``Sam3Model.forward(vision_embeds=...)`` from the shared backbone."""
        import torch
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        if state.detector_embeds is None:
            with torch.inference_mode():
                fpn, pos = self.detector.vision_encoder.neck(self._spatial(state))
            state.detector_embeds = Sam3VisionEncoderOutput(
                last_hidden_state=state.hidden, fpn_hidden_states=fpn, fpn_position_encoding=pos
            )
        return state.detector_embeds

    def tracker_embeds(self, state: Sam3ImageState):
        """The list ``Sam3TrackerModel.get_image_embeddings`` would return, built from the shared backbone."""
        import torch

        if state.tracker_embeds is None:
            with torch.inference_mode():
                fpn, _pos = self.tracker.vision_encoder.neck(self._spatial(state))
                maps = list(fpn)
                maps[0] = self.tracker.mask_decoder.conv_s0(maps[0])
                maps[1] = self.tracker.mask_decoder.conv_s1(maps[1])
                maps[-1] = maps[-1] + self.tracker.no_memory_embedding.view(1, -1, 1, 1)
            state.tracker_embeds = maps[: len(self.tracker.backbone_feature_sizes)]
        return state.tracker_embeds

    # ----------------------------------------------------------------------------------------------- prompts

    def predict_points(self, state: Sam3ImageState, points: np.ndarray) -> np.ndarray:
        """Positive point prompts (k, 2) as (x, y) crop pixels -> the best-IoU mask of SAM's three, (h, w) bool."""
        import torch

        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            raise ValueError("predict_points needs at least one point")
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN or infinite values")
        h, w = state.crop_size
        enc = self.tracker_processor(
            input_points=[[pts.tolist()]],
            input_labels=[[[1] * len(pts)]],
            original_sizes=[[h, w]],
            return_tensors="pt",
        )
        kwargs = {
            "input_points": enc["input_points"].to(self.device, self.dtype),
            "input_labels": enc["input_labels"].to(self.device),
            "multimask_output": True,
        }
        with torch.inference_mode():
            if self.share_encoding:
                out = self.tracker(image_embeddings=self.tracker_embeds(state), **kwargs)
            else:
                out = self.tracker(pixel_values=state.pixel_values, **kwargs)
            iou = out.iou_scores[0, 0].float()
            best = int(torch.argmax(iou))
            low = out.pred_masks[0, 0, best : best + 1].float()  # (1, h', w') logits
            mask = self.tracker_processor.post_process_masks(
                [low[None]], [[h, w]], mask_threshold=self._mask_logit_threshold, binarize=True
            )[0][0, 0]
        state.scores["point"] = float(iou[best])
        return mask.cpu().numpy().astype(bool)

    def predict_text(self, state: Sam3ImageState, phrase: str) -> np.ndarray:
        """A noun phrase -> the best-scoring SAM3 instance mask (or the union above the score threshold)."""
        import torch

        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError("predict_text needs a non-empty phrase")
        h, w = state.crop_size
        text = self.processor(text=phrase.strip(), return_tensors="pt")
        kwargs = {
            "input_ids": text["input_ids"].to(self.device),
            "attention_mask": text["attention_mask"].to(self.device),
        }
        with torch.inference_mode():
            if self.share_encoding:
                out = self.detector(vision_embeds=self.detector_embeds(state), **kwargs)
            else:
                out = self.detector(pixel_values=state.pixel_values, **kwargs)
            if self.text_instances == "union":
                res = self.processor.post_process_instance_segmentation(
                    out, threshold=self.text_score_threshold, mask_threshold=self.mask_threshold, target_sizes=[(h, w)]
                )[0]
                state.scores["text"] = float(res["scores"].max()) if len(res["scores"]) else 0.0
                if len(res["masks"]) == 0:
                    return np.zeros((h, w), dtype=bool)
                return res["masks"].bool().any(dim=0).cpu().numpy()
            scores = out.pred_logits[0].float().sigmoid()
            if out.presence_logits is not None:
                scores = scores * out.presence_logits[0].float().sigmoid()
            best = int(torch.argmax(scores))
            state.scores["text"] = float(scores[best])
            if scores[best] <= self.text_score_threshold:
                return np.zeros((h, w), dtype=bool)
            logits = out.pred_masks[0, best : best + 1].float()[None]  # (1, 1, h', w')
            up = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            return (up[0, 0] > self._mask_logit_threshold).cpu().numpy()
