"""GeoSeg (arXiv 2603.03983): training-free reasoning segmentation for remote sensing.

The paper's equations are pure numpy functions importable from here; model backends sit behind the protocols in
``geoseg.protocols``. This package knows no database, Label Studio or Prefect.
"""

from geoseg.box import clamp_box, refine_box, roi_from_box
from geoseg.keypoints import topk_nms_keypoints
from geoseg.masks import fuse_masks, paste_back, validity, validity_margin
from geoseg.metrics import (
    METRIC_NAMES,
    Confusion,
    SampleScore,
    aggregate_metrics,
    boundary_f,
    mask_iou,
    segmentation_metrics,
)
from geoseg.types import (
    ABLATIONS,
    TINY_MODEL_WARNING,
    BackendSpec,
    Box,
    BoxOutcome,
    GeoSegConfig,
    GeoSegResult,
    Grounding,
)

__all__ = [
    "ABLATIONS",
    "METRIC_NAMES",
    "TINY_MODEL_WARNING",
    "BackendSpec",
    "Box",
    "BoxOutcome",
    "Confusion",
    "GeoSegConfig",
    "GeoSegResult",
    "Grounding",
    "SampleScore",
    "aggregate_metrics",
    "boundary_f",
    "clamp_box",
    "fuse_masks",
    "mask_iou",
    "paste_back",
    "refine_box",
    "roi_from_box",
    "segmentation_metrics",
    "topk_nms_keypoints",
    "validity",
    "validity_margin",
]
