"""Matcher 𝓒: CLIP Surgery on an open_clip ViT — a similarity map of a phrase over a crop (GeoSeg §3.3, Route A).

CLIP's patch tokens are poorly localised: self-attention mixes every token with a few "global" ones, and a large
share of each feature is the same for every class ("redundant features"). CLIP Surgery (Li et al., 2023) fixes both
at inference time, without training:

* **Architecture surgery** — in the last ``surgery_blocks`` transformer blocks a second path runs alongside the
  original one. At each such block the input of the original path is layer-normed and projected to q, k, v by the
  block's own ``in_proj_weight`` (3C x C); the original path continues unchanged (q-k attention, then the MLP), while
  the new path accumulates only v-v attention outputs (softmax(v vᵀ / √d) v through ``out_proj``) and skips the MLP.
  Patch features are read from the new path, the class token from the original one (so the image embedding is the
  model's usual one — a test checks this).
* **Feature surgery** — with patch features f (normalised, projected) and a text feature t, the element-wise
  products f ⊙ t are summed over channels after removing the redundant part r: ``"empty"`` mode uses r = f ⊙ t_∅,
  t_∅ being the (prompt-ensembled) empty-prompt text feature; ``"class_mean"`` uses r = mean_k f ⊙ t_k over the phrase
  and a set of background classes. (Both are the CLIP Surgery forms; the class mean is uniform here.)
* **Prompt ensemble** — the phrase's text feature is the renormalised mean over templates (the empty-prompt feature
  too). ``templates`` is a list or a named set (``TEMPLATE_SETS``): ``"remote_sensing"`` (``DEFAULT_TEMPLATES``,
  "a satellite photo of a {}." ...), ``"imagenet"`` (the 85 templates both references ensemble over; the paper
  profile's choice, as the authors' code ran it) or ``"imagenet+remote_sensing"``.

The crop is resized to ``input_size`` (default: the model's trained size, 224 for ViT-B/16; the paper profile uses
512, ``PAPER_INPUT_SIZE``, as both references do) without cropping or padding, so map pixels line up with crop pixels;
at a size other than the trained one the patch positional embedding is bilinearly interpolated to the new grid
(32 x 32 at 512 px for ViT-B/16, against 14 x 14 at 224). The patch map is min-max normalised to [0, 1] and bilinearly
upsampled to the crop size.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from geoseg.keypoints import normalise_map
from geoseg.types import BackendSpec

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a satellite photo of a {}.",
    "an aerial photo of a {}.",
    "a remote sensing image of a {}.",
    "a top-down view of a {}.",
    "a photo of a {}.",
    "a high resolution satellite image of the {}.",
)

#: The 85 templates both references ensemble over: CLIP Surgery's ``encode_text_with_prompt_ensemble`` default
#: (xmed-lab/CLIP_Surgery ``clip/clip.py``; the public GeoSeg code calls the same function): OpenAI CLIP's 80 ImageNet
#: prompt templates followed by five scene templates.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.", "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
)  # fmt: skip

#: Named template sets for the ``templates`` option (a list of strings works too).
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "remote_sensing": DEFAULT_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "imagenet+remote_sensing": IMAGENET_TEMPLATES + tuple(t for t in DEFAULT_TEMPLATES if t not in IMAGENET_TEMPLATES),
}

#: Input side of the paper profile: both references resize the crop to 512 x 512 (a 32 x 32 patch map for ViT-B/16)
#: and interpolate the positional embedding bilinearly (CLIP Surgery ``clip/clip_surgery_model.py``; GeoSeg
#: ``CLIP_Surgery/process_annotations_clip_surverg.py``).
PAPER_INPUT_SIZE = 512

#: Background classes for the ``class_mean`` redundancy mode (typical remote-sensing scene content).
DEFAULT_BACKGROUND_CLASSES: tuple[str, ...] = (
    "building",
    "road",
    "tree",
    "grass",
    "water",
    "vehicle",
    "farmland",
    "bare soil",
    "parking lot",
)

MATCHER_KINDS = ("open_clip", "tiny")
_TEXT_CACHE_SIZE = 256


def _check_crop(crop: np.ndarray) -> np.ndarray:
    a = np.asarray(crop)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"crop must be an (h, w, 3) RGB array with h, w >= 1, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"crop must be uint8 RGB, got dtype {a.dtype}")
    return a


class ClipSurgeryMatcher:
    """CLIP Surgery similarity maps on an open_clip ``CLIP`` model with a standard ``VisionTransformer`` tower."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        templates: tuple[str, ...] | str = DEFAULT_TEMPLATES,
        input_size: int | tuple[int, int] | None = None,
        surgery_blocks: int = 6,
        redundancy: str = "empty",
        background_classes: tuple[str, ...] = DEFAULT_BACKGROUND_CLASSES,
        device: str = "cpu",
        meaningless: bool = False,
        source: str = "",
    ) -> None:
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.meaningless = meaningless
        self.source = source
        v = getattr(model, "visual", None)
        problems = []
        if v is None or not hasattr(v, "transformer") or not hasattr(v, "conv1"):
            problems.append("the model has no open_clip VisionTransformer tower (timm/ConvNeXt towers don't work)")
        else:
            if getattr(v, "attn_pool", None) is not None or getattr(v, "pool_type", "tok") != "tok":
                problems.append("the tower must pool the class token (pool_type 'tok', no attentional pooler)")
            if not getattr(v.transformer, "batch_first", True):
                problems.append("the vision transformer must be batch-first")
            for i, blk in enumerate(v.transformer.resblocks):
                attn = getattr(blk, "attn", None)
                if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None:
                    problems.append(f"block {i} has no nn.MultiheadAttention with a packed in_proj_weight")
                    break
            if v.proj is None:
                problems.append("the tower has no output projection")
        if problems:
            raise ValueError("CLIP Surgery needs a standard open_clip ViT: " + "; ".join(problems))
        n = len(v.transformer.resblocks)
        if not isinstance(surgery_blocks, int) or not 1 <= surgery_blocks <= n:
            raise ValueError(f"surgery_blocks must be an integer in [1, {n}] for this model, got {surgery_blocks!r}")
        if redundancy not in ("empty", "class_mean"):
            raise ValueError(f"redundancy must be 'empty' or 'class_mean', got {redundancy!r}")
        if isinstance(templates, str):
            if templates not in TEMPLATE_SETS:
                raise ValueError(f"templates must be a list or one of {sorted(TEMPLATE_SETS)}, got {templates!r}")
            templates = TEMPLATE_SETS[templates]
        templates = tuple(templates)
        if not templates or any(not isinstance(t, str) or "{}" not in t for t in templates):
            raise ValueError("templates must be a non-empty list of strings each containing '{}'")
        self.templates = templates
        self.surgery_blocks = surgery_blocks
        self.redundancy = redundancy
        self.background_classes = tuple(background_classes)
        if redundancy == "class_mean" and not self.background_classes:
            raise ValueError("the class_mean redundancy needs at least one background class")
        cfg = getattr(v, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=torch.float32)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=torch.float32)
        size = v.image_size
        self.native_size = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
        patch = v.conv1.stride
        self.patch_size = (int(patch[0]), int(patch[1]))
        self.input_size = self.native_size if input_size is None else _check_input_size(input_size, self.patch_size)
        self._pos_cache: dict[tuple[int, int], Any] = {}
        self.dtype = v.conv1.weight.dtype
        self._text_cache: OrderedDict[str, Any] = OrderedDict()

    @classmethod
    def from_spec(cls, spec: BackendSpec, *, meaningless: bool = False) -> ClipSurgeryMatcher:
        """``spec.model``: an open_clip name (``ViT-B-16``), ``local-dir:<dir>`` or ``hf-hub:<repo>``;
        ``options["pretrained"]``: a tag (``openai``) or a checkpoint file, for plain names."""
        import open_clip

        from geoseg.devices import resolve_device

        if not spec.model:
            raise ValueError("the open_clip matcher needs spec.model, e.g. 'ViT-B-16' or 'local-dir:/path'")
        opts = dict(spec.options)
        pretrained = opts.pop("pretrained", None)
        device = resolve_device(opts.pop("device", "auto"))
        opts.pop("require_gpu", None)
        known = {"templates", "input_size", "surgery_blocks", "redundancy", "background_classes"}
        unknown = set(opts) - known
        if unknown:
            raise ValueError(f"unknown open_clip matcher options {sorted(unknown)}; known: {sorted(known)}")
        if "templates" in opts and not isinstance(opts["templates"], str):
            opts["templates"] = tuple(opts["templates"])
        if isinstance(opts.get("input_size"), list):
            opts["input_size"] = tuple(opts["input_size"])
        if "background_classes" in opts:
            opts["background_classes"] = tuple(opts["background_classes"])
        try:
            model = open_clip.create_model(spec.model, pretrained=pretrained, device=device, require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(spec.model)
        except (RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(
                f"could not load open_clip weights for model={spec.model!r} pretrained={pretrained!r}: {exc}. "
                "Offline, pass a checkpoint file as options.pretrained or a 'local-dir:<dir>' model "
                "(open_clip_config.json + weights)."
            ) from exc
        return cls(model, tokenizer, device=device, meaningless=meaningless, source=spec.model, **opts)

    # ------------------------------------------------------------------------------------------------ text side

    def text_feature(self, phrase: str):
        """Prompt-ensembled, L2-normalised text feature (D,) of ``phrase`` ("" gives the empty-prompt feature)."""
        import torch

        if phrase in self._text_cache:
            self._text_cache.move_to_end(phrase)
            return self._text_cache[phrase]
        tokens = self.tokenizer([t.format(phrase) for t in self.templates]).to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_text(tokens).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            feat = feats.mean(dim=0)
            feat = feat / feat.norm()
        self._text_cache[phrase] = feat
        if len(self._text_cache) > _TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return feat

    # ----------------------------------------------------------------------------------------------- image side

    def preprocess(self, crop: np.ndarray):
        """(h, w, 3) uint8 -> (1, 3, H_in, W_in) normalised tensor (plain resize: map pixels align with the crop)."""
        import torch
        from torch.nn import functional as F  # noqa: N812

        a = _check_crop(crop)
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float().div_(255.0)
        x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        return x.to(self.device, self.dtype)

    @staticmethod
    def _dual_attention(attn: Any, y):
        """Original (q-k) and v-v self-attention outputs of one nn.MultiheadAttention on batch-first ``y``."""
        from torch.nn import functional as F  # noqa: N812

        B, N, C = y.shape
        heads = attn.num_heads
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

        def split(t):
            return t.reshape(B, N, heads, C // heads).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        ori = F.scaled_dot_product_attention(q, k, v)
        vv = F.scaled_dot_product_attention(v, v, v)

        def merge(t):
            return F.linear(t.transpose(1, 2).reshape(B, N, C), attn.out_proj.weight, attn.out_proj.bias)

        return merge(ori), merge(vv)

    def positional_embedding(self, grid: tuple[int, int]):
        """The tower's positional embedding for a ``grid`` of patches: the class position unchanged, the patch
        positions bilinearly interpolated from the trained grid (as CLIP Surgery does for 512 px; the model's
        parameter itself is left untouched). Cached per grid."""
        import torch
        from torch.nn import functional as F  # noqa: N812

        pos = self.model.visual.positional_embedding
        gh0, gw0 = self.native_size[0] // self.patch_size[0], self.native_size[1] // self.patch_size[1]
        if tuple(grid) == (gh0, gw0):
            return pos
        if grid not in self._pos_cache:
            with torch.inference_mode():
                patches = pos[1:].reshape(1, gh0, gw0, -1).permute(0, 3, 1, 2).float()
                up = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
                up = up.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
                self._pos_cache[grid] = torch.cat([pos[:1], up], dim=0)
        return self._pos_cache[grid]

    def encode_image(self, pixel_values):
        """Dual-path forward: (patch features (1, N, D) from the v-v path, image embedding (1, D), grid (gh, gw))."""
        import torch

        v = self.model.visual
        with torch.inference_mode():
            x = v.conv1(pixel_values)
            gh, gw = x.shape[-2:]
            x = x.flatten(2).transpose(1, 2)
            cls_tok = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
            x = torch.cat([cls_tok, x], dim=1) + self.positional_embedding((int(gh), int(gw))).to(x.dtype)
            x = v.ln_pre(x)
            blocks = list(v.transformer.resblocks)
            start = len(blocks) - self.surgery_blocks
            for blk in blocks[:start]:
                x = blk(x)
            x_ori, x_vv = x, x
            for blk in blocks[start:]:
                ori, vv = self._dual_attention(blk.attn, blk.ln_1(x_ori))
                x_vv = x_vv + blk.ls_1(vv)
                x_ori = x_ori + blk.ls_1(ori)
                x_ori = x_ori + blk.ls_2(blk.mlp(blk.ln_2(x_ori)))
            patches = v.ln_post(x_vv[:, 1:]) @ v.proj
            image = v.ln_post(x_ori[:, 0]) @ v.proj
        return patches.float(), image.float(), (int(gh), int(gw))

    # ------------------------------------------------------------------------------------------------ the map

    def feature_surgery(self, patches, phrase: str):
        """Per-patch score (N,) of ``phrase`` with the redundant features removed."""
        f = patches[0] / patches[0].norm(dim=-1, keepdim=True)  # (N, D)
        t = self.text_feature(phrase)
        if self.redundancy == "empty":
            redundant = f * self.text_feature("")[None, :]
        else:
            classes = [phrase] + [c for c in self.background_classes if c != phrase]
            import torch

            T = torch.stack([self.text_feature(c) for c in classes])  # (K, D)
            redundant = (f[:, None, :] * T[None, :, :]).mean(dim=1)
        return (f * t[None, :] - redundant).sum(dim=-1)

    def similarity_map(self, crop: np.ndarray, phrase: str) -> np.ndarray:
        """(h, w) float32 map in [0, 1] of ``phrase`` over ``crop`` (all zeros when the map is flat).

        When the model's scores are not finite (NaN/inf, e.g. an overflow in float16) the map is all NaN instead of
        an exception: the pipeline then marks Route A invalid with that reason and Route B decides (design §2).
        """
        import torch
        from torch.nn import functional as F  # noqa: N812

        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError("similarity_map needs a non-empty phrase")
        a = _check_crop(crop)
        h, w = a.shape[:2]
        patches, _image, (gh, gw) = self.encode_image(self.preprocess(a))
        with torch.inference_mode():
            scores = self.feature_surgery(patches, phrase.strip()).reshape(gh, gw)
            if not bool(torch.isfinite(scores).all()):
                return np.full((h, w), np.nan, dtype=np.float32)
            norm = normalise_map(scores.cpu().numpy())
            if norm is None:
                return np.zeros((h, w), dtype=np.float32)
            up = F.interpolate(torch.from_numpy(norm)[None, None], size=(h, w), mode="bilinear", align_corners=False)
        return np.clip(up[0, 0].numpy(), 0.0, 1.0).astype(np.float32)


def _check_input_size(size: Any, patch: tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(hw) != 2 or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in hw):
        raise ValueError(f"input_size must be a positive integer or (height, width), got {size!r}")
    if hw[0] % patch[0] or hw[1] % patch[1]:
        raise ValueError(f"input_size {hw} must be a multiple of the patch size {patch}")
    return (int(hw[0]), int(hw[1]))


def build_matcher(spec: BackendSpec) -> ClipSurgeryMatcher:
    """``open_clip``: the model named by ``spec`` (paper: ``ViT-B-16`` with ``pretrained="openai"``);
    ``tiny``: a tiny random open_clip ViT built into the model cache (masks meaningless)."""
    if not isinstance(spec, BackendSpec):
        raise ValueError(f"build_matcher needs a BackendSpec, got {type(spec).__name__}")
    if spec.kind == "open_clip":
        return ClipSurgeryMatcher.from_spec(spec)
    if spec.kind == "tiny":
        from geoseg.tiny import build_tiny_open_clip, model_cache_dir

        opts = dict(spec.options)
        root = opts.pop("cache_dir", None) or model_cache_dir()
        opts.setdefault("surgery_blocks", 2)
        d = build_tiny_open_clip(root)
        return ClipSurgeryMatcher.from_spec(BackendSpec("open_clip", f"local-dir:{d}", opts), meaningless=True)
    raise ValueError(f"unknown matcher kind {spec.kind!r}; choose from {list(MATCHER_KINDS)}")
