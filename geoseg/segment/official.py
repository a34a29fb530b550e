"""SAM3 through Meta's official ``sam3`` package: a second backend for GPU installs only.

Not installed in the default environment, on purpose. Measured on PyPI ``sam3`` 0.1.4: it hard-codes
``device="cuda"``, imports ``triton``, ships no BPE vocabulary, and caps ``huggingface-hub<2`` and ``numpy<2.4``,
which conflicts with transformers 5.x in this project's environment. Install it in its own environment on a GPU node::

    python3.12 -m venv .venv-sam3 && . .venv-sam3/bin/activate
    pip install torch torchvision --index-url https://download.pytorch.org/whl/cu126
    pip install sam3==0.1.4 -e /path/to/this/repo --no-deps   # then the geolabel deps sam3 does not pin
    # weights + BPE vocab: `hf download facebook/sam3 sam3.pt` (gated) and open_clip's bpe_simple_vocab_16e6.txt.gz

and use a segmenter spec ``{"kind": "sam3-official", "model": "/path/sam3.pt", "options": {"bpe_path": "..."}}``.

The same protocol holds: ``set_image`` encodes once (the package's own ``Sam3Processor.set_image`` state), the text
prompt goes through ``set_text_prompt`` and point prompts through the instance-interactivity head (``predict_inst``),
both on that one state. Route B is the union of the instances the package keeps (its threshold set to
``text_score_threshold``, default 0.3 as the transformers backend); there is no separate presence gate here. This
backend cannot run here (no GPU, package absent); it is written against the package's
documented API and is untested in this repository's CI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geoseg.types import BackendSpec

INSTALL_HINT = (
    "the 'sam3-official' segmenter needs Meta's sam3 package and a CUDA GPU; it cannot share this environment "
    "(it pins huggingface-hub<2 and numpy<2.4 and imports triton). Install it in its own venv as described in "
    "geoseg/segment/official.py, or use the default 'sam3-transformers' backend"
)


class Sam3OfficialSegmenter:
    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.encoder_calls = 0
        self.meaningless = False

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> Sam3OfficialSegmenter:
        try:
            import torch
            from sam3.model.sam3_image_processor import Sam3Processor
            from sam3.model_builder import build_sam3_image_model
        except ImportError as exc:
            raise RuntimeError(f"{INSTALL_HINT} (import failed: {exc})") from exc
        if not torch.cuda.is_available():
            raise RuntimeError("the 'sam3-official' segmenter hard-codes CUDA; no GPU is visible here")
        opts = dict(spec.options)
        kwargs: dict[str, Any] = {"enable_inst_interactivity": True}
        if spec.model:
            kwargs["checkpoint_path"] = spec.model
        if opts.get("bpe_path"):
            kwargs["bpe_path"] = opts["bpe_path"]
        model = build_sam3_image_model(**kwargs)
        return cls(model, Sam3Processor(model, confidence_threshold=float(opts.get("text_score_threshold", 0.3))))

    def set_image(self, crop: np.ndarray) -> Any:
        from PIL import Image

        a = np.asarray(crop)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"crop must be an (h, w, 3) uint8 array, got shape {a.shape} dtype {a.dtype}")
        self.encoder_calls += 1
        return {"state": self.processor.set_image(Image.fromarray(a)), "size": a.shape[:2]}

    def predict_points(self, state: Any, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        return self.predict_clicks(state, pts, np.ones(len(pts), dtype=np.int32))

    def predict_clicks(self, state: Any, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Foreground (1) and background (0) points, one prompt: ``predict_inst``'s ``point_labels``."""
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        lab = np.asarray(labels, dtype=np.int32).reshape(-1)
        if len(pts) == 0:
            raise ValueError("predict_points needs at least one point")
        if len(lab) != len(pts) or not lab.any():
            raise ValueError("predict_clicks needs one label per point and at least one foreground (1) point")
        # multimask only for a single click (Meta: several prompts are not ambiguous), as the transformers backend
        masks, scores, _ = self.model.predict_inst(
            state["state"], point_coords=pts, point_labels=lab, multimask_output=len(pts) == 1
        )
        masks, scores = np.asarray(masks), np.asarray(scores)
        return masks[int(np.argmax(scores))].astype(bool)

    def predict_text(self, state: Any, phrase: str) -> np.ndarray:
        if not phrase or not phrase.strip():
            raise ValueError("predict_text needs a non-empty phrase")
        out = self.processor.set_text_prompt(state=state["state"], prompt=phrase.strip())
        h, w = state["size"]
        masks, scores = out["masks"], out["scores"]
        if len(scores) == 0:
            return np.zeros((h, w), dtype=bool)
        # the package already keeps only instances whose presence-weighted score passes its confidence threshold
        # (set to the paper profile's 0.3 in from_spec): Route B is their union, empty when none passes
        return masks.reshape(len(scores), *masks.shape[-2:]).any(dim=0).detach().cpu().numpy().astype(bool)
