"""Prompt templates for the grounder 𝓛 (GeoSeg §3.1, Stage 1) and the coordinate conventions they ask for.

Two answer forms are supported:

- ``geoseg``: one target, ``{"bbox": [x1, y1, x2, y2], "prompt": "<short entity phrase>"}``; the phrase feeds SAM3's
  text route (Route B). No target is ``{"bbox": null, "prompt": ""}``.
- ``think2seg``: the Think2Seg-RS form, a JSON list of ``{"bbox_2d": [...], "positive_points": [[x, y], ...],
  "label": "..."}``; an empty list ``[]`` means the query has no target in the image.

The coordinate convention is explicit and part of the backend config, because asking for one and parsing another
shifts every box: ``pixel`` (absolute pixels of the image the model sees), ``norm1000`` (a 0-1000 grid relative to the
width and height, Qwen3-VL's native grounding grid) or ``norm1`` (fractions in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Convention = Literal["pixel", "norm1000", "norm1"]
PromptForm = Literal["geoseg", "think2seg"]

CONVENTIONS: tuple[str, ...] = ("pixel", "norm1000", "norm1")
PROMPT_FORMS: tuple[str, ...] = ("geoseg", "think2seg")

SYSTEM_PROMPT = (
    "You are a remote-sensing visual grounding assistant. You read an aerial or satellite image and a question "
    "that may need reasoning, and you locate the object or region the question refers to."
)


@dataclass(frozen=True)
class GroundingPrompt:
    """The chat turns sent to the grounder: a system text and the user text that goes next to the image."""

    system: str
    user: str
    form: PromptForm
    convention: Convention


def check_convention(convention: str) -> Convention:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown coordinate convention {convention!r}; choose one of {CONVENTIONS}")
    return convention  # type: ignore[return-value]


def check_form(form: str) -> PromptForm:
    if form not in PROMPT_FORMS:
        raise ValueError(f"unknown prompt form {form!r}; choose one of {PROMPT_FORMS}")
    return form  # type: ignore[return-value]


def describe_convention(convention: Convention, image_size: tuple[int, int] | None = None) -> str:
    """One sentence telling the model which coordinates to write."""
    check_convention(convention)
    if convention == "pixel":
        size = f" of this {image_size[0]}x{image_size[1]} image" if image_size else " of the image"
        return (
            f"Coordinates are absolute pixel positions{size}: x grows to the right from 0 at the left edge, "
            "y grows downwards from 0 at the top edge."
        )
    if convention == "norm1000":
        return (
            "Coordinates are integers on a 0-1000 grid relative to the image: x = 1000 * column / width, "
            "y = 1000 * row / height, with (0, 0) the top-left and (1000, 1000) the bottom-right corner."
        )
    return (
        "Coordinates are fractions of the image width and height between 0 and 1, with (0, 0) the top-left "
        "and (1, 1) the bottom-right corner."
    )


def geoseg_prompt(query: str, convention: Convention, image_size: tuple[int, int] | None = None) -> GroundingPrompt:
    """GeoSeg form: one box for the single target plus a short entity phrase for the text route."""
    user = (
        f"Question: {query.strip()}\n"
        "Find the one target region the question refers to. Reply with JSON only, no other text:\n"
        '{"bbox": [x1, y1, x2, y2], "prompt": "<short entity phrase naming the target, e.g. red-roofed building>"}\n'
        "where (x1, y1) is the top-left and (x2, y2) the bottom-right corner of a tight box around the target. "
        f"{describe_convention(convention, image_size)}\n"
        'If nothing in the image matches the question, reply {"bbox": null, "prompt": ""}.'
    )
    return GroundingPrompt(SYSTEM_PROMPT, user, "geoseg", convention)


def think2seg_prompt(
    query: str, convention: Convention, image_size: tuple[int, int] | None = None
) -> GroundingPrompt:
    """Think2Seg-RS form: a list of boxes, each with positive points inside the target; [] means no target."""
    user = (
        f"Question: {query.strip()}\n"
        "Locate every target region the question refers to. Reply with a JSON list only, no other text:\n"
        '[{"bbox_2d": [x1, y1, x2, y2], "positive_points": [[x, y], [x, y]], "label": "<short entity phrase>"}]\n'
        "with one entry per target, a tight box, and one or two points that lie inside the target itself "
        f"(not on its background). {describe_convention(convention, image_size)}\n"
        "If nothing in the image matches the question, reply with an empty list [] ."
    )
    return GroundingPrompt(SYSTEM_PROMPT, user, "think2seg", convention)


def build_prompt(
    query: str, form: str = "geoseg", convention: str = "norm1000", image_size: tuple[int, int] | None = None
) -> GroundingPrompt:
    """The prompt for ``query`` in the given answer form and coordinate convention."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the grounding query must be a non-empty string")
    conv = check_convention(convention)
    if check_form(form) == "geoseg":
        return geoseg_prompt(query, conv, image_size)
    return think2seg_prompt(query, conv, image_size)
