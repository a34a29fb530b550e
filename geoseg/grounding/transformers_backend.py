"""Grounder backend on Hugging Face transformers: ``AutoModelForImageTextToText`` + ``AutoProcessor``.

Loads a hub id (``Qwen/Qwen3-VL-32B-Instruct`` for the paper profile) or a local directory, renders the chat template
with the image, generates greedily, decodes only the new tokens and parses them with :func:`parse_grounding`.

Coordinate frames: Qwen3-VL answers on its 0-1000 grid (``convention="norm1000"``, the default). Qwen2.5-VL answers in
absolute pixels of the image *after* the processor resized it: use ``convention="pixel"`` with
``pixel_frame="model_input"`` and the boxes are parsed in that frame and rescaled to the original image.

Constrained decoding (``constrained=True``, the default): a logits processor keeps generation inside the answer's
grammar (``geoseg.grounding.constrained``: the GeoSeg or Think2Seg-RS JSON form, integer coordinates bounded to the
frame, x1 < x2, y1 < y2), so every finished answer parses into boxes, even from random tiny weights; with
``allow_no_target`` the model may still answer "no target" (``null`` / ``[]``). ``constrained=False`` is free decoding,
parsed after the fact with the same parser (which stays the reader of both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.devices import resolve_device, resolve_dtype
from geoseg.grounding.constrained import (
    CONSTRAINED_CONVENTIONS,
    GrammarLogitsProcessor,
    TokenIndex,
    answer_grammar,
)
from geoseg.grounding.errors import GrounderError, GrounderLoadError
from geoseg.grounding.parse import note_truncation, parse_grounding, rescale_grounding
from geoseg.grounding.prompts import GroundingPrompt, build_prompt, check_convention, check_form
from geoseg.types import Grounding

PAPER_GROUNDER = "Qwen/Qwen3-VL-32B-Instruct"
PIXEL_FRAMES: tuple[str, ...] = ("image", "model_input")


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Validate an image as (H, W, 3) uint8; (H, W) grey and (H, W, 4) RGBA are converted. ValueError otherwise."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"the grounder needs a uint8 image, got dtype {arr.dtype} (convert or rescale it first)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"the grounder needs an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"the grounder got an empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def accelerate_available() -> bool:
    from importlib.util import find_spec

    return find_spec("accelerate") is not None


class TransformersGrounder:
    """𝓛 on a local transformers model. Loads once (lazily, thread-safe) and reuses the model for every call."""

    def __init__(
        self,
        model: str,
        *,
        convention: str = "norm1000",
        prompt_form: str = "geoseg",
        max_new_tokens: int = 256,
        device: str = "auto",
        dtype: str = "auto",
        pixel_frame: str = "image",
        system_prompt: bool = True,
        trust_remote_code: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        require_gpu: bool = False,
        device_map: str | None = None,
        batch_size: int = 1,
        meaningless: bool = False,
        constrained: bool = True,
        allow_no_target: bool = True,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ValueError("TransformersGrounder needs a model: a hub id or a local directory")
        self.model_id = model
        self.convention = check_convention(convention)
        self.prompt_form = check_form(prompt_form)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        #: items per generate() call in ground_many (left-padded batch); 1 = one call per item
        self.batch_size = batch_size
        if pixel_frame not in PIXEL_FRAMES:
            raise ValueError(f"pixel_frame must be one of {PIXEL_FRAMES}, got {pixel_frame!r}")
        self.pixel_frame = pixel_frame
        self.device_option = device
        #: passed to from_pretrained (e.g. "auto" to spread a model over several GPUs; needs `accelerate`). When
        #: None, a CUDA device loads with device_map=<device> if accelerate is installed, else loads then moves.
        self.device_map = device_map
        self.dtype_option = dtype
        self.system_prompt = bool(system_prompt)
        self.trust_remote_code = bool(trust_remote_code)
        self.processor_kwargs = dict(processor_kwargs or {})
        #: refuse to load on a machine without CUDA (the paper profile: a 32B model on a CPU is not a run)
        self.require_gpu = bool(require_gpu)
        #: True for the tiny random model: its boxes mean nothing (see geoseg.types.TINY_MODEL_WARNING)
        self.meaningless = bool(meaningless)
        #: decode under the answer's grammar (geoseg.grounding.constrained): every finished answer parses into a box
        #: (or an explicit "no target" when allow_no_target); False = free decoding, parsed after the fact
        self.constrained = bool(constrained)
        self.allow_no_target = bool(allow_no_target)
        if self.constrained and self.convention not in CONSTRAINED_CONVENTIONS:
            raise ValueError(
                f"constrained decoding writes integer coordinates: use convention norm1000 or pixel with it "
                f"(got {self.convention!r}), or set constrained = false"
            )
        self._token_index = None
        #: new tokens generated so far (up to and including each answer's EOS), for throughput figures
        self.generated_tokens = 0
        self._model = None
        self._processor = None
        self._device: str | None = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    def __repr__(self) -> str:
        return (
            f"TransformersGrounder(model={self.model_id!r}, convention={self.convention!r}, "
            f"prompt_form={self.prompt_form!r}, loaded={self._model is not None})"
        )

    # ------------------------------------------------------------------------------------------------ loading
    def _load_error(self, exc: BaseException) -> GrounderLoadError:
        local = Path(self.model_id).expanduser()
        where = f"local directory {str(local)!r}" if local.exists() else f"{self.model_id!r} (a hub id or a path)"
        hint = (
            "Point the grounder at a local model directory, or download the weights first "
            f"(e.g. `hf download {self.model_id}`) and run without HF_HUB_OFFLINE. "
            f"The paper profile ({PAPER_GROUNDER}) needs those weights (~66 GB in bf16) and a GPU with about 80 GB "
            "of memory; use the tiny profile to run the code path on a CPU."
        )
        if "accelerate" in str(exc):
            hint = "Install `accelerate` in this environment, or leave the device_map option unset."
        return GrounderLoadError(f"cannot load the grounder model from {where}: {type(exc).__name__}: {exc}. {hint}")

    def load(self) -> None:
        """Load processor and model (once). Raises GrounderLoadError naming the model when that fails."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            t0 = time.perf_counter()
            try:
                from transformers import AutoModelForImageTextToText, AutoProcessor
            except ImportError as exc:  # pragma: no cover - transformers is a hard dependency
                raise GrounderLoadError(f"transformers is not installed: {exc}") from exc
            device = resolve_device(self.device_option)
            if self.require_gpu and not device.startswith("cuda"):
                raise GrounderLoadError(
                    f"the grounder {self.model_id!r} is configured with require_gpu=true but no CUDA GPU is "
                    f"visible (device={device!r}). The paper profile ({PAPER_GROUNDER}, ~66 GB in bf16) needs a GPU "
                    "with about 80 GB of memory and the downloaded weights; use the tiny profile on a CPU, or point "
                    "the grounder at a served model (kind openai)."
                )
            dtype = resolve_dtype(self.dtype_option, device)
            try:
                processor = AutoProcessor.from_pretrained(
                    self.model_id, trust_remote_code=self.trust_remote_code, **self.processor_kwargs
                )
                kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": self.trust_remote_code}
                device_map = self.device_map
                if device_map is None and device.startswith("cuda") and accelerate_available():
                    device_map = device  # load the shards straight onto the GPU
                if device_map is not None:
                    kwargs["device_map"] = device_map
                model = AutoModelForImageTextToText.from_pretrained(self.model_id, **kwargs)
            except (OSError, ValueError, KeyError, ImportError) as exc:
                raise self._load_error(exc) from exc
            if device_map is None:
                model = model.to(device)
            model.eval()
            self._processor, self._model, self._device = processor, model, device
            self.load_seconds = time.perf_counter() - t0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # --------------------------------------------------------------------------------------------- inference
    def _model_input_size(self, pil_image) -> tuple[int, int]:
        """(W, H) of the image after the processor's resize (Qwen2-VL-style grid of patches)."""
        ip = self._processor.image_processor
        out = ip(images=[pil_image], return_tensors="pt")
        _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
        patch = int(getattr(ip, "patch_size", 14))
        return gw * patch, gh * patch

    def prompt_for(self, query: str, frame_size: tuple[int, int] | None) -> GroundingPrompt:
        return build_prompt(query, self.prompt_form, self.convention, frame_size)

    def _messages(self, prompt: GroundingPrompt) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": prompt.system})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.user}]})
        return messages

    def generate_texts(
        self,
        images: list[np.ndarray],
        prompts: list[GroundingPrompt],
        frames: list[tuple[int, int]] | None = None,
    ) -> list[str]:
        """Greedy generation for a batch of (image, prompt) pairs in one ``generate`` call (left padding);
        returns only the newly generated text of each. ``frames``: the (W, H) each answer's coordinates refer to
        (constrained decoding bounds them by it; default: each image's size)."""
        return [text for text, _cut in self._generate(images, prompts, frames)]

    def token_index(self):
        """The tokenizer's vocabulary as a :class:`~geoseg.grounding.constrained.TokenIndex` (built once)."""
        if self._token_index is None:
            self.load()
            with self._lock:
                if self._token_index is None:
                    self._token_index = TokenIndex.from_tokenizer(self._processor.tokenizer)
        return self._token_index

    def _grammar_processor(self, prompts: list[GroundingPrompt], frames: list[tuple[int, int]]):
        eos = self._model.generation_config.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
        grammars = [
            answer_grammar(p.form, p.convention, f, allow_no_target=self.allow_no_target)
            for p, f in zip(prompts, frames, strict=True)
        ]
        return GrammarLogitsProcessor(self.token_index(), grammars, eos_ids, self.max_new_tokens)

    def _generate(
        self,
        images: list[np.ndarray],
        prompts: list[GroundingPrompt],
        frames: list[tuple[int, int]] | None = None,
    ) -> list[tuple[str, bool]]:
        """(new text, cut off at max_new_tokens) per item."""
        import torch
        from PIL import Image
        from transformers import LogitsProcessorList

        if len(images) != len(prompts) or not images:
            raise ValueError(f"need as many prompts as images (and at least one), got {len(images)}/{len(prompts)}")
        self.load()
        rgbs = [as_rgb_uint8(im) for im in images]
        pils = [Image.fromarray(im) for im in rgbs]
        frames = frames or [(im.shape[1], im.shape[0]) for im in rgbs]
        grammar = self._grammar_processor(prompts, frames) if self.constrained else None
        processor, model = self._processor, self._model
        render = processor.apply_chat_template
        texts = [render(self._messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
        with self._lock, torch.inference_mode():
            processor.tokenizer.padding_side = "left"  # generation continues every row from its last real token
            inputs = processor(text=texts, images=pils, padding=True, return_tensors="pt").to(model.device)
            if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            extra = {"logits_processor": LogitsProcessorList([grammar])} if grammar is not None else {}
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, **extra)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        # constrained: the text exactly as the grammar accepted it (some decoders put spaces between tokens)
        texts = grammar.texts if grammar is not None else processor.batch_decode(new_tokens, skip_special_tokens=True)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        rows = [row.tolist() for row in new_tokens]
        cut = [len(row) >= self.max_new_tokens and not (eos_ids & set(row)) for row in rows]
        self.generated_tokens += sum(
            next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row)) for row in rows
        )
        return list(zip(texts, cut, strict=True))

    def generate_text(self, image: np.ndarray, prompt: GroundingPrompt) -> str:
        """Greedy generation on (image, prompt); returns only the newly generated text."""
        return self.generate_texts([image], [prompt])[0]

    def _prepare(self, image: np.ndarray, query: str) -> tuple[np.ndarray, tuple[int, int], GroundingPrompt]:
        """Validated RGB, the frame the model's coordinates refer to (W, H), and the prompt."""
        rgb = as_rgb_uint8(image)
        H, W = rgb.shape[:2]
        self.load()
        frame = (W, H)
        if self.convention == "pixel" and self.pixel_frame == "model_input":
            from PIL import Image

            frame = self._model_input_size(Image.fromarray(rgb))
        return rgb, frame, self.prompt_for(query, frame)

    def _finish(self, answer: tuple[str, bool], rgb: np.ndarray, frame: tuple[int, int]) -> Grounding:
        H, W = rgb.shape[:2]
        text, cut = answer
        g = parse_grounding(text, frame, self.convention)
        if cut:
            g = note_truncation(g, "max_new_tokens", self.max_new_tokens)
        return rescale_grounding(g, frame, (W, H)) if frame != (W, H) else g

    def _generation_error(self, exc: BaseException) -> GrounderError:
        return GrounderError(f"grounder generation failed on {self.model_id!r}: {type(exc).__name__}: {exc}")

    def ground(self, image: np.ndarray, query: str) -> Grounding:
        """𝓛(image, query): boxes in absolute pixels of ``image``. Model failures raise GrounderError."""
        rgb, frame, prompt = self._prepare(image, query)
        try:
            answer = self._generate([rgb], [prompt], [frame])[0]
        except GrounderError:
            raise
        except (RuntimeError, ValueError, IndexError) as exc:
            raise self._generation_error(exc) from exc
        return self._finish(answer, rgb, frame)

    def ground_many(self, items: Iterable[tuple[np.ndarray, str]]) -> list[Grounding | Exception]:
        """Ground each (image, query), ``batch_size`` items per ``generate`` call; one Grounding or exception per
        item, in order. A bad item (invalid image, empty query) yields its exception without stopping the batch;
        when a batched call fails, its items are retried one by one so only the failing item reports the error."""
        items = list(items)
        try:
            self.load()
        except GrounderLoadError as exc:  # a model that cannot load fails every item the same way
            return [exc] * len(items)
        results: list[Grounding | Exception | None] = [None] * len(items)
        ready: list[tuple[int, np.ndarray, tuple[int, int], GroundingPrompt]] = []
        for i, (image, query) in enumerate(items):
            try:
                ready.append((i, *self._prepare(image, query)))
            except (GrounderError, ValueError) as exc:
                results[i] = exc
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start : start + self.batch_size]
            try:
                answers = self._generate([c[1] for c in chunk], [c[3] for c in chunk], [c[2] for c in chunk])
            except (RuntimeError, ValueError, IndexError) as exc:
                if len(chunk) == 1:
                    results[chunk[0][0]] = self._generation_error(exc)
                    continue
                for i, rgb, frame, prompt in chunk:  # isolate the failing item
                    try:
                        results[i] = self._finish(self._generate([rgb], [prompt], [frame])[0], rgb, frame)
                    except (RuntimeError, ValueError, IndexError) as exc_one:
                        results[i] = self._generation_error(exc_one)
                continue
            for (i, rgb, frame, _prompt), answer in zip(chunk, answers, strict=True):
                results[i] = self._finish(answer, rgb, frame)
        return [r for r in results if r is not None]
