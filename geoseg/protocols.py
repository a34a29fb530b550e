"""The three model roles of GeoSeg behind small protocols; backends live in grounding/, clip_surgery.py, segment/.

Every role declares ``meaningless``: True for a tiny randomly initialised model (its output exercises the code and
means nothing, ``geoseg.types.TINY_MODEL_WARNING``), False for real weights. A grounder that can ground many items
in one call (a batched ``generate``, concurrent requests to a server) also implements :class:`BatchGrounder`.
All protocols are ``runtime_checkable``: ``isinstance(g, BatchGrounder)`` is how the pipeline decides, never a
``getattr`` probe.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Generic, Protocol, runtime_checkable

import numpy as np

from geoseg.types import GeoSegResult, Grounding


@runtime_checkable
class Grounder(Protocol):
    """𝓛: reads image + query, returns boxes (absolute pixels) and a short entity phrase."""

    meaningless: bool

    def ground(self, image: np.ndarray, query: str) -> Grounding: ...


@runtime_checkable
class BatchGrounder(Grounder, Protocol):
    """A grounder that grounds a batch in one call: one Grounding *or the exception that item raised* per item, in
    order (a bad item never stops the others)."""

    def ground_many(self, items: Iterable[tuple[np.ndarray, str]]) -> list[Grounding | Exception]: ...


@runtime_checkable
class Matcher(Protocol):
    """𝓒: CLIP Surgery similarity map of ``phrase`` over ``crop``: (h, w) float at the crop's size."""

    meaningless: bool

    def similarity_map(self, crop: np.ndarray, phrase: str) -> np.ndarray: ...


@runtime_checkable
class Segmenter(Protocol):
    """𝓢: one vision encoding per crop (``set_image``), then any number of point and text prompts on it.

    Masks come back as (h, w) bool at the crop's resolution; an empty mask when the model finds nothing.
    """

    meaningless: bool

    def set_image(self, crop: np.ndarray) -> Any: ...

    def predict_points(self, state: Any, points: np.ndarray) -> np.ndarray: ...

    def predict_text(self, state: Any, phrase: str) -> np.ndarray: ...


@runtime_checkable
class ClickSegmenter(Segmenter, Protocol):
    """A segmenter that also takes background points, as SAM does: ``labels`` 1 (foreground) or 0 (background) per
    point, all of them one prompt for one object (an annotator's clicks). Label Studio's smart tools use it
    (``geoseg.interactive``); a segmenter without it gets positive points only there."""

    def predict_clicks(self, state: Any, points: np.ndarray, labels: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Pipeline(Protocol):
    """What the registry hands out and the flows call: ``GeoSegPipeline`` or any object with the same surface.

    ``meaningless`` is True when any model in it is a tiny random one; ``model_version`` names what produced the
    results (stored with every prediction).
    """

    model_version: str
    meaningless: bool

    def __call__(self, image: np.ndarray, query: str) -> GeoSegResult: ...

    def run_batch(
        self, items: Iterable[tuple[Hashable, np.ndarray, str]], batch_size: int = 16
    ) -> Iterator[tuple[Hashable, GeoSegResult | Exception]]: ...


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The attribute and method names a protocol class declares (its own and its protocol bases')."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (Protocol, Generic, object):
            continue
        names.update(cls.__dict__.get("__annotations__", {}))
        names.update(n for n, v in cls.__dict__.items() if callable(v) and (not n.startswith("_") or n == "__call__"))
    return tuple(sorted(names))


def check_role(model: Any, role: str, protocol: type) -> Any:
    """``model`` when it implements ``protocol``; else a ValueError naming what is missing."""
    if not isinstance(model, protocol):
        missing = [n for n in protocol_members(protocol) if not hasattr(model, n)]
        raise ValueError(
            f"the {role} {type(model).__name__} does not implement geoseg.protocols.{protocol.__name__}"
            f" (missing: {', '.join(missing) or '?'})"
        )
    return model
