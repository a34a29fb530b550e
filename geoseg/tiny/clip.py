"""The tiny random open_clip ViT for the CLIP Surgery matcher, saved in open_clip's ``local-dir:`` layout."""

from __future__ import annotations

import json
from pathlib import Path

from geoseg.tiny.cache import build_atomically

OPEN_CLIP_DIRNAME = "open_clip_tiny"


def tiny_open_clip_config() -> dict:
    """A small open_clip ViT (same classes as ViT-B/16: patch conv, batch-first MultiheadAttention blocks).

    The text tower keeps CLIP's 49408-token vocabulary so the BPE tokenizer shipped in the open_clip wheel works.
    """
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def build_tiny_open_clip(root: Path) -> Path:
    """Build, save (``local-dir:`` layout) and return the tiny open_clip model directory. Idempotent."""

    def build(tmp: Path) -> None:
        import open_clip
        import torch
        from safetensors.torch import save_file

        cfg = tiny_open_clip_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.CLIP(**cfg)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "open_clip_model.safetensors"))
        preprocess = {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
        (tmp / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2)
        )
        return {"seed": 0}

    return build_atomically(Path(root) / OPEN_CLIP_DIRNAME, "tiny-open_clip", build)
