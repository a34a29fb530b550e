"""Repository layer: idempotent upserts for every record and the queries the flows need, one module per stage.

Every write is keyed on the table's natural unique key (see :mod:`storage.models`) and goes through
``INSERT … ON CONFLICT`` (SQLite and PostgreSQL dialects), so running a flow twice, or two workers racing on the same
record, ends with one row. Functions take a :class:`~sqlalchemy.orm.Session` and never commit: the caller's
``session_scope`` decides the transaction.

Conflict rules:

* image, item, label project: first write wins (``DO NOTHING``), the id of the existing row is returned.
* prediction (item, model_version): a stored *failed* prediction is replaced by a new one; a successful one is kept.
* label task (project, item): updated to the newest push (task id, pushed prediction).
* annotation (ls_annotation_id): updated when the incoming ``updated_at`` is newer (Label Studio edits); then the
  item's status and triplet are recomputed from the consensus of its live annotations (storage.consensus: with the
  default overlap 1, the newest non-retracted one).

Modules:
* :mod:`storage.repo.images`      -- images and items
* :mod:`storage.repo.predictions` -- predictions
* :mod:`storage.repo.labeling`    -- Label Studio projects and tasks
* :mod:`storage.repo.annotations` -- annotations, item decisions (consensus), triplets, watermarks
* :mod:`storage.repo.consensus`   -- project consensus settings, per-item consensus rows, the adjudication queue
* :mod:`storage.repo.snapshots`   -- snapshots
* :mod:`storage.repo.counts`      -- counts

Every public name is re-exported here: callers write ``from storage import repo`` and ``repo.upsert_items(...)``.
"""

from __future__ import annotations

from storage.repo.annotations import (
    accepted_triplets,
    advance_watermark,
    annotations_since,
    get_watermark,
    redecide_items,
    retract_annotations,
    stored_annotation_versions,
    upsert_annotations,
    upsert_triplets,
)
from storage.repo.base import CHUNK
from storage.repo.consensus import (
    AdjudicationCase,
    adjudication_cases,
    adjudication_queue,
    item_consensus,
    project_consensus,
    review_project_of,
    set_project_consensus,
)
from storage.repo.counts import (
    count_rows,
    item_status_counts,
)
from storage.repo.images import (
    delete_untouched_items,
    get_images,
    image_by_sha,
    image_ids_by_sha,
    image_refs,
    item_keys,
    item_work,
    items_awaiting_prediction,
    items_on_images,
    known_image_shas,
    pending_image_work,
    set_item_status,
    upsert_images,
    upsert_items,
)
from storage.repo.labeling import (
    label_task_by_ls_id,
    label_tasks,
    predictions_awaiting_push,
    record_label_tasks,
    upsert_label_project,
)
from storage.repo.predictions import (
    prediction_for,
    upsert_predictions,
)
from storage.repo.snapshots import (
    SnapshotConflictError,
    create_snapshot,
    get_snapshot,
    manifest_sha256,
    snapshot_manifest,
)

__all__ = [
    "AdjudicationCase",
    "CHUNK",
    "SnapshotConflictError",
    "accepted_triplets",
    "adjudication_cases",
    "adjudication_queue",
    "advance_watermark",
    "annotations_since",
    "count_rows",
    "create_snapshot",
    "delete_untouched_items",
    "get_images",
    "get_snapshot",
    "get_watermark",
    "image_by_sha",
    "item_consensus",
    "image_refs",
    "image_ids_by_sha",
    "item_keys",
    "item_status_counts",
    "item_work",
    "items_awaiting_prediction",
    "items_on_images",
    "known_image_shas",
    "label_task_by_ls_id",
    "label_tasks",
    "manifest_sha256",
    "pending_image_work",
    "prediction_for",
    "predictions_awaiting_push",
    "record_label_tasks",
    "redecide_items",
    "retract_annotations",
    "stored_annotation_versions",
    "review_project_of",
    "set_item_status",
    "project_consensus",
    "set_project_consensus",
    "snapshot_manifest",
    "upsert_annotations",
    "upsert_images",
    "upsert_items",
    "upsert_label_project",
    "upsert_predictions",
    "upsert_triplets",
]
