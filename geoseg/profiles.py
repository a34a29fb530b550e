"""Named pipeline configurations: ``paper``, ``tiny``, or a TOML/JSON file.

``paper`` — the models of the GeoSeg paper:

* grounder: ``Qwen/Qwen3-VL-32B-Instruct`` (transformers, 0-1000 box grid). bf16 weights ≈ 66 GB: one 80 GB GPU
  (A100/H100 80G) holds it with room for the activations of one image; for throughput, serve it with vLLM and use an
  ``openai`` grounder spec instead (a profile file can override just the grounder, see below).
* matcher: open_clip ``ViT-B-16-quickgelu`` (ViT-B/16 with the activation OpenAI trained it with) and
  ``pretrained="openai"`` (≈ 0.6 GB), CLIP Surgery at 512 px with the 85 ImageNet templates (as the references).
* segmenter: ``facebook/sam3`` through transformers (≈ 3.4 GB; gated on the hub: accept the licence, then
  ``hf download facebook/sam3``); Route B = presence-gated union of instances scoring above 0.3, Route A = one prompt
  with all keypoints (``PAPER_SEGMENTER_OPTIONS``; sources in ``geoseg.segment.sam3_transformers``).

Every spec carries ``require_gpu``: building the pipeline without a visible CUDA GPU fails with a clear error; missing
weights fail with the loader's error naming the model. Download the weights first (``hf download
Qwen/Qwen3-VL-32B-Instruct``, ``hf download facebook/sam3``; open_clip fetches the OpenAI ViT-B/16 on first use), then
``geolabel predict IMAGE "QUERY" --profile paper``.

``tiny`` — tiny random models built on first use into the model cache (``geoseg.tiny``): the real code path on CPU
in seconds; the masks mean nothing (``TINY_MODEL_WARNING``).

A profile file (``.toml`` or ``.json``) holds ``GeoSegConfig`` fields; ``extends = "paper"`` (or ``"tiny"``, or
another file) starts from that profile, and a ``[grounder]``/``[matcher]``/``[segmenter]`` table replaces only the keys
it names (``options`` are merged key by key). Example::

    extends = "paper"
    profile = "paper-vllm"
    [grounder]
    kind = "openai"
    model = "Qwen/Qwen3-VL-32B-Instruct"
    options = { base_url = "http://gpu-node:8000/v1", api_key_env = "VLLM_API_KEY", require_gpu = false }
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from geoseg.types import BackendSpec, GeoSegConfig

PAPER_GROUNDER = "Qwen/Qwen3-VL-32B-Instruct"
#: OpenAI's CLIP weights were trained with QuickGELU; open_clip's "-quickgelu" config matches them (plain "ViT-B-16"
#: with the "openai" tag would warn of the mismatch and run the wrong activation).
PAPER_MATCHER = "ViT-B-16-quickgelu"
PAPER_SEGMENTER = "facebook/sam3"
#: CLIP Surgery as both references run it: 512 x 512 input (positional embedding interpolated), the 85 ImageNet
#: templates (geoseg.clip_surgery).
PAPER_MATCHER_OPTIONS = {"pretrained": "openai", "input_size": 512, "templates": "imagenet"}
#: Route B = union of SAM3 instances scoring above 0.3, empty when the presence head says "absent"; Route A = one
#: prompt with all keypoints (multimask only for a single point). Sources and reasons: geoseg.segment.sam3_transformers.
PAPER_SEGMENTER_OPTIONS = {
    "text_instances": "union",
    "text_score_threshold": 0.3,
    "presence_threshold": 0.5,
    "point_mode": "auto",
}
PROFILE_NAMES = ("paper", "tiny")
_SPECS = ("grounder", "matcher", "segmenter")


def paper_config() -> GeoSegConfig:
    return GeoSegConfig(
        profile="paper",
        grounder=BackendSpec("transformers", PAPER_GROUNDER, {"convention": "norm1000", "require_gpu": True}),
        matcher=BackendSpec("open_clip", PAPER_MATCHER, {**PAPER_MATCHER_OPTIONS, "require_gpu": True}),
        segmenter=BackendSpec("sam3-transformers", PAPER_SEGMENTER, {**PAPER_SEGMENTER_OPTIONS, "require_gpu": True}),
    )


def tiny_config() -> GeoSegConfig:
    return GeoSegConfig(
        profile="tiny",
        grounder=BackendSpec("tiny"),
        matcher=BackendSpec("tiny"),
        segmenter=BackendSpec("tiny"),
    )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read profile file {str(path)!r}: {exc}") from exc
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"profile file {str(path)!r} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"profile file {str(path)!r} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"profile file {str(path)!r} must hold a table/object of GeoSegConfig fields")
    return data


#: The keys of a backend table ([grounder], [matcher], [segmenter]) in a profile file.
BACKEND_KEYS = frozenset({"kind", "model", "options"})


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key in _SPECS and isinstance(value, dict):
            unknown = sorted(set(value) - BACKEND_KEYS)
            if unknown:
                raise ValueError(f"profile table [{key}]: unknown key(s) {', '.join(map(repr, unknown))}; a backend "
                                 f"table takes {', '.join(sorted(BACKEND_KEYS))} (backend settings go in options)")
            spec = dict(base.get(key) or {})
            if "kind" in value and value["kind"] != spec.get("kind"):
                spec = {"kind": value["kind"], "model": "", "options": {}}  # a new backend starts clean
            options = {**dict(spec.get("options") or {}), **dict(value.get("options") or {})}
            spec.update({k: v for k, v in value.items() if k != "options"})
            spec["options"] = options
            out[key] = spec
        else:
            out[key] = value
    return out


def load_profile(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> GeoSegConfig:
    """``"paper"``, ``"tiny"``, or the path of a TOML/JSON profile file (see the module docstring)."""
    name = str(name_or_path).strip()
    if name == "paper":
        return paper_config()
    if name == "tiny":
        return tiny_config()
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(
            f"unknown profile {name!r}: use one of {list(PROFILE_NAMES)} or the path of a .toml/.json file"
        )
    key = str(path.resolve())
    if key in _seen:
        raise ValueError(f"profile {name!r} extends itself (cycle: {' -> '.join(_seen + (key,))})")
    data = _read_file(path)
    base: dict[str, Any] = {}
    extends = data.pop("extends", None)
    if extends is not None:
        ref = str(extends)
        if ref not in PROFILE_NAMES and not Path(ref).is_absolute():
            ref = str(path.parent / ref)
        base = load_profile(ref, _seen + (key,)).to_dict()
    merged = _merge(base, data)
    if "profile" not in data:  # a file is its own profile (and model_version), named after the file
        merged["profile"] = path.stem
    try:
        return GeoSegConfig.from_dict(merged)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"profile file {str(path)!r}: {exc}") from exc
