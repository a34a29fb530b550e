"""The three model roles of GeoSeg behind small protocols; backends live in grounding/, clip_surgery.py, segment/."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from geoseg.types import Grounding


@runtime_checkable
class Grounder(Protocol):
    """𝓛: reads image + query, returns boxes (absolute pixels) and a short entity phrase."""

    def ground(self, image: np.ndarray, query: str) -> Grounding: ...


@runtime_checkable
class Matcher(Protocol):
    """𝓒: CLIP Surgery similarity map of ``phrase`` over ``crop``: (h, w) float at the crop's size."""

    def similarity_map(self, crop: np.ndarray, phrase: str) -> np.ndarray: ...


@runtime_checkable
class Segmenter(Protocol):
    """𝓢: one vision encoding per crop (``set_image``), then any number of point and text prompts on it.

    Masks come back as (h, w) bool at the crop's resolution; an empty mask when the model finds nothing.
    """

    def set_image(self, crop: np.ndarray) -> Any: ...

    def predict_points(self, state: Any, points: np.ndarray) -> np.ndarray: ...

    def predict_text(self, state: Any, phrase: str) -> np.ndarray: ...
