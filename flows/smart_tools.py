"""Label Studio's smart tools (a click, a box) answered by the pipeline's SAM3: ``ModelHandle.prompt`` of
``labeling.ml_backend``, wiring ``labeling.ml_backend.SmartPrompt`` (what the annotator drew) to
``geoseg.interactive.prompt_mask`` (how the segmenter is prompted; negative clicks are SAM's background points).

Masks are the model's; with the tiny random models they are meaningless (the backend says so on every region).
"""

from __future__ import annotations

from typing import Any


def smart_prompt_handler(pipeline: Any) -> Any:
    """``ModelHandle.prompt`` for a ``geoseg.pipeline.GeoSegPipeline``: its SAM3 on the task image."""
    from geoseg.imagery import read_image
    from geoseg.interactive import prompt_mask
    from labeling.ml_backend import Suggestion

    def prompt(image_bytes: bytes, smart: Any) -> Suggestion:
        rgb = read_image(image_bytes).rgb
        points, labels, box = smart.in_pixels_of(rgb.shape[1], rgb.shape[0])
        mask, route = prompt_mask(pipeline.segmenter, rgb, points, labels, box)
        return Suggestion(mask, pipeline.model_version, 1.0 if mask.any() else 0.0, f"smart tool: {route}")

    return prompt
