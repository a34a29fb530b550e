"""A SIMULATED annotator for the demo and benchmarks: a script, not a person.

It annotates review tasks through the same Label Studio API the web UI uses, so the rest of the loop (sync,
triplets, exports) sees what a verifier would produce: it accepts, corrects, rejects or marks "no target", cycling
through :data:`ACTIONS`. Its corrections are synthetic (a dilated pre-label, or an ellipse near the centre when the
pre-label is empty): they carry no information about the image and must never be mistaken for human labels.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

SIMULATED_ANNOTATOR = "SIMULATED ANNOTATOR (demo script, not a person)"

#: The simulated annotator's decision for the i-th unannotated task (cycled): what a verifier typically does.
ACTIONS = ("accept", "correct", "accept", "reject", "no target")


@dataclass
class SimulatedAction:
    ls_task_id: int
    action: str  # accept (pre-label as is) | correct (edited mask, then accept) | reject | no target
    ls_annotation_id: int
    mask_pixels: int


def verdict_region(choice: str) -> dict[str, Any]:
    """The verdict (accept | reject | no target) as a Label Studio choices result region."""
    from labeling.project import IMAGE_TO, VERDICT_FROM

    return {"from_name": VERDICT_FROM, "to_name": IMAGE_TO, "type": "choices", "value": {"choices": [choice]}}


def prelabel_mask(task: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The union of a task's brush pre-labels (its predictions' RLE regions) as a boolean mask."""
    from labeling.brush import rle_to_mask

    mask = np.zeros((height, width), dtype=bool)
    for pred in task.get("predictions") or []:
        for region in pred.get("result") or []:
            value = region.get("value") or {}
            if region.get("type") == "brushlabels" and "rle" in value:
                mask |= rle_to_mask(value["rle"], height, width)
    return mask


def corrected_mask(prelabel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The simulated correction: grow a non-empty pre-label by a few pixels; for an empty one draw an ellipse
    around a point near the centre (what an annotator does when the model missed)."""
    from scipy import ndimage

    h, w = prelabel.shape
    if prelabel.any():
        return ndimage.binary_dilation(prelabel, iterations=int(rng.integers(2, 6)))
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    ry, rx = h * rng.uniform(0.08, 0.2), w * rng.uniform(0.08, 0.2)
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _decide(action: str, pre: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(mask, Label Studio result) for one simulated decision on a task whose pre-label is ``pre``."""
    from labeling.push import brush_result

    if action in ("accept", "correct"):
        mask = pre if action == "accept" else corrected_mask(pre, rng)
        return mask, brush_result(mask) + [verdict_region("accept")]
    if action == "reject":
        return pre, brush_result(pre) + [verdict_region("reject")]
    return np.zeros(pre.shape, dtype=bool), [verdict_region("no target")]


def simulate_annotator(
    client: Any, session: Any, ls_project_id: int, *, seed: int = 0, only_items: Collection[int] | None = None
) -> list[SimulatedAction]:
    """SIMULATED annotations (clearly not a person's) on every task of the project that has none yet (restricted to
    the items ``only_items`` when given). Decisions cycle through :data:`ACTIONS`; an "accept" of an empty pre-label
    becomes a correction (an accepted mask must not be empty)."""
    from storage.repo.labeling import task_image_sizes

    allowed = None if only_items is None else {int(i) for i in only_items}
    sizes = {t: (h, w) for t, (h, w, iid) in task_image_sizes(session, ls_project_id).items()
             if allowed is None or iid in allowed}
    rng = np.random.default_rng(seed)
    actions: list[SimulatedAction] = []
    tasks = sorted(client.iter_tasks(ls_project_id, fields="all"), key=lambda t: t["id"])
    for i, task in enumerate(tasks):
        if task.get("annotations") or int(task["id"]) not in sizes:
            continue
        h, w = sizes[int(task["id"])]
        action = ACTIONS[i % len(ACTIONS)]
        pre = prelabel_mask(task, h, w)
        if action == "accept" and not pre.any():
            action = "correct"
        mask, result = _decide(action, pre, rng)
        made = client.create_annotation(int(task["id"]), result, lead_time=float(rng.uniform(4.0, 40.0)))
        actions.append(SimulatedAction(int(task["id"]), action, int(made["id"]), int(mask.sum())))
    return actions
