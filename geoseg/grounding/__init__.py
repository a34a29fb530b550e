"""The grounder 𝓛 of GeoSeg (Stage 1): image + query -> boxes in absolute pixels and a short entity phrase.

Backends (built from a :class:`~geoseg.types.BackendSpec` by :func:`build_grounder`):

- ``transformers``: ``AutoModelForImageTextToText`` + ``AutoProcessor`` from a hub id or a local directory
  (Qwen3-VL is the paper's model; Qwen2.5-VL works with ``convention="pixel"``, ``pixel_frame="model_input"``).
- ``openai``: any OpenAI-compatible chat-completions server (vLLM, ...), image sent as a base64 PNG data URL.
- ``tiny``: a tiny randomly initialised Qwen3-VL built and saved on first use, then loaded by the transformers
  backend through the same ``from_pretrained`` path. Constrained decoding (the default) makes its random answers
  well-formed boxes, so the whole pipeline runs; the mechanics are real, the boxes and masks mean nothing.

Common options: ``convention`` (``norm1000`` default, ``pixel``, ``norm1``), ``prompt_form`` (``geoseg`` default,
``think2seg``) and ``constrained`` (default true: decode under the answer's JSON grammar, or send a JSON-schema
``response_format``; see ``geoseg.grounding.constrained``). The answer text is parsed by :func:`parse_grounding`,
which never raises on model output.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.grounding.errors import GrounderAuthError, GrounderError, GrounderLoadError, GrounderRejectedError
from geoseg.grounding.parse import parse_grounding, rescale_grounding
from geoseg.grounding.prompts import CONVENTIONS, PROMPT_FORMS, GroundingPrompt, build_prompt
from geoseg.types import BackendSpec

if TYPE_CHECKING:
    from geoseg.protocols import Grounder

GROUNDER_KINDS: tuple[str, ...] = ("transformers", "openai", "tiny")


def resolve_tiny_grounder_dir(spec: BackendSpec) -> Path:
    """Where the tiny grounder lives: ``spec.model`` when given, else ``<model cache>/qwen3vl``."""
    from geoseg.tiny import TINY_GROUNDER_SUBDIR, build_tiny_grounder_model, model_cache_dir

    if spec.model:
        target = Path(spec.model).expanduser()
        # spec.model may name the model dir itself (…/qwen3vl) or the root it is built under
        if target.name == TINY_GROUNDER_SUBDIR:
            return build_tiny_grounder_model(target.parent)
        return build_tiny_grounder_model(target)
    return build_tiny_grounder_model(model_cache_dir())


def _construct(cls: type, kind: str, model: str, options: dict[str, Any]) -> Any:
    """``cls(model, **options)`` with a clear error naming unknown options (instead of a bare TypeError)."""
    params = inspect.signature(cls.__init__).parameters
    known = sorted(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for the {kind} grounder; known options: {known}")
    return cls(model, **options)


def build_grounder(spec: BackendSpec) -> Grounder:
    """Build the grounder named by ``spec.kind`` (``transformers``, ``openai`` or ``tiny``); models load lazily once."""
    if not isinstance(spec, BackendSpec):
        raise ValueError(f"build_grounder needs a BackendSpec, got {type(spec).__name__}")
    options = dict(spec.options)
    if spec.kind == "transformers":
        from geoseg.grounding.transformers_backend import TransformersGrounder

        if not spec.model:
            raise ValueError("the transformers grounder needs spec.model: a hub id or a local model directory")
        return _construct(TransformersGrounder, "transformers", spec.model, options)
    if spec.kind == "openai":
        from geoseg.grounding.openai_backend import OpenAIGrounder

        if not spec.model:
            raise ValueError("the openai grounder needs spec.model: the served model name")
        return _construct(OpenAIGrounder, "openai", spec.model, options)
    if spec.kind == "tiny":
        from geoseg.grounding.transformers_backend import TransformersGrounder

        options.setdefault("max_new_tokens", 64)  # room for a complete constrained answer in the tiny vocabulary
        # random weights would pick "no target" about as often as a box; made to name one, the whole path runs
        options.setdefault("allow_no_target", False)
        options["meaningless"] = True
        return _construct(TransformersGrounder, "tiny", str(resolve_tiny_grounder_dir(spec)), options)
    raise ValueError(f"unknown grounder kind {spec.kind!r}; choose one of {GROUNDER_KINDS}")


__all__ = [
    "CONVENTIONS",
    "GROUNDER_KINDS",
    "PROMPT_FORMS",
    "GrounderAuthError",
    "GrounderError",
    "GrounderLoadError",
    "GrounderRejectedError",
    "GroundingPrompt",
    "build_grounder",
    "build_prompt",
    "parse_grounding",
    "rescale_grounding",
    "resolve_tiny_grounder_dir",
]
