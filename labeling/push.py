"""Push GeoSeg predictions to Label Studio as tasks with pre-labels, in bulk and idempotently.

Each task carries ``data = {image, query, item_id, image_sha256}`` and one prediction: the mask as a brush RLE region
(:mod:`labeling.brush`) with ``model_version`` and ``score``. Tasks go in bulk imports of ``batch_size`` tasks (one
request each); the database records each batch (``LabelTask``) right after its request and commits.

Idempotent, also after a crash between an import and its database write: before importing, the project's tasks are
listed once and any task whose ``data.item_id`` is pending is *reconciled* (recorded in the database) instead of being
imported again. An item already pushed with an older model version gets the new pre-label added to its existing task.

Image URLs: local files through Label Studio's local-files serving (``/data/local-files/?d=<path below the document
root>``), ``s3://`` images as presigned GET URLs (S3 or moto_server), http(s) URLs unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session

from labeling.brush import mask_to_rle
from labeling.client import LabelStudioClient, LabelStudioUnavailableError
from labeling.project import IMAGE_TO, MASK_FROM, TARGET_LABEL, ProjectHandle
from storage import repo
from storage.blobs import BlobStore
from storage.maskcodec import decode_mask
from storage.models import Image, Item, Prediction
from storage.records import LabelTaskRecord

log = logging.getLogger(__name__)


class ImageUrlError(ValueError):
    """An image cannot be given to Label Studio by URL."""


class ImageUrlResolver:
    """Image URI (absolute path, ``s3://bucket/key`` or http(s)) -> a URL Label Studio can load.

    ``imagery_root`` is the directory the local server serves (``LabelStudioServer.imagery_root``): Label Studio's
    LOCAL_FILES_DOCUMENT_ROOT is its parent and the project has a local storage for the root itself (see
    ``LabelStudioServer.document_root``), so a local image below the root becomes
    ``/data/local-files/?d=<root name>/<path below the root>``.
    """

    def __init__(
        self,
        imagery_root: str | Path | None = None,
        *,
        s3_client: Any = None,
        presign_expires: int = 7 * 24 * 3600,
    ) -> None:
        self.imagery_root = Path(imagery_root).expanduser().resolve() if imagery_root else None
        self.document_root = self.imagery_root.parent if self.imagery_root else None
        self.s3_client = s3_client
        self.presign_expires = int(presign_expires)

    @classmethod
    def for_server(cls, server, **kw: Any) -> ImageUrlResolver:  # noqa: ANN001 - labeling.server.LabelStudioServer
        return cls(server.imagery_root or server.root, **kw)

    def __call__(self, uri: str) -> str:
        if uri.startswith(("http://", "https://")):
            return uri
        if uri.startswith("s3://"):
            if self.s3_client is None:
                raise ImageUrlError(f"{uri}: an S3 image needs an S3 client to presign its URL")
            bucket, _, key = uri[5:].partition("/")
            if not bucket or not key:
                raise ImageUrlError(f"{uri}: not an s3://bucket/key URI")
            return self.s3_client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.presign_expires
            )
        if self.imagery_root is None or self.document_root is None:
            raise ImageUrlError(f"{uri}: local images need the imagery directory Label Studio serves")
        path = Path(uri).expanduser().resolve()
        try:
            path.relative_to(self.imagery_root)
            rel = path.relative_to(self.document_root)
        except ValueError:
            raise ImageUrlError(
                f"{uri} is outside the imagery root {self.imagery_root} that Label Studio serves; "
                "start the server with that imagery directory or move the image below it"
            ) from None
        return "/data/local-files/?d=" + quote(rel.as_posix(), safe="/")


def brush_result(mask, *, score: float | None = None) -> list[dict[str, Any]]:  # noqa: ANN001 - bool ndarray
    """A Label Studio result list holding ``mask`` as one brush region (empty list for an empty mask)."""
    import numpy as np

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if not m.any():
        return []
    h, w = m.shape
    region: dict[str, Any] = {
        "from_name": MASK_FROM,
        "to_name": IMAGE_TO,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(m), "brushlabels": [TARGET_LABEL]},
    }
    if score is not None:
        region["score"] = float(score)
    return [region]


@dataclass
class PushReport:
    pushed: int = 0  # tasks created
    reconciled: int = 0  # tasks found in Label Studio and recorded (crash recovery)
    updated: int = 0  # existing tasks that got this model version's pre-label
    failed: list[tuple[int, str]] = field(default_factory=list)  # (item id, reason)
    requests: int = 0
    seconds: float = 0.0

    @property
    def tasks_per_second(self) -> float:
        return self.pushed / self.seconds if self.seconds > 0 else 0.0


def _task_payload(
    item: Item, image: Image, pred: Prediction, blobs: BlobStore, image_url: Callable[[str], str]
) -> dict[str, Any]:
    if pred.mask_sha256:
        mask = decode_mask(blobs.get(pred.mask_sha256), shape=(image.height, image.width))
        result = brush_result(mask)
    else:
        result = []
    prediction: dict[str, Any] = {"model_version": pred.model_version, "result": result}
    if pred.score is not None:
        prediction["score"] = float(pred.score)
    return {
        "data": {
            "image": image_url(image.uri),
            "query": item.query,
            "item_id": int(item.id),
            "image_sha256": image.sha256,
        },
        "predictions": [prediction],
    }


#: Pauses (seconds) before re-checking whether an import with an unknown outcome (a timeout) landed after all.
UNKNOWN_OUTCOME_SETTLE_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


def _tasks_by_item(client: LabelStudioClient, project: ProjectHandle, item_ids: set[int]) -> dict[int, dict[str, Any]]:
    """The project's tasks whose ``data.item_id`` is in ``item_ids`` (the first one per item)."""
    found: dict[int, dict[str, Any]] = {}
    for task in client.iter_tasks(project.ls_project_id, fields="task_only", page_size=500):
        iid = (task.get("data") or {}).get("item_id")
        if isinstance(iid, int) and iid in item_ids and iid not in found:
            found[iid] = task
    return found


def push_predictions(
    client: LabelStudioClient,
    session: Session,
    blobs: BlobStore,
    project: ProjectHandle,
    model_version: str,
    *,
    image_url: Callable[[str], str],
    batch_size: int = 200,
    limit: int | None = None,
) -> PushReport:
    """Push every prediction of ``model_version`` not yet in the project; commits after each batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    req0 = client.requests_made
    report = PushReport()
    pending = repo.predictions_awaiting_push(session, project.label_project_id, model_version, limit=limit)
    if not pending:
        report.seconds = time.perf_counter() - t0
        return report
    by_item = {item.id: (item, pred) for item, pred in pending}

    # Reconcile: tasks already in Label Studio for pending items (a crash after the import, before the DB write,
    # or an older model version's task).
    existing = _tasks_by_item(client, project, set(by_item))
    records: list[LabelTaskRecord] = []
    for iid, task in existing.items():
        item, pred = by_item.pop(iid)
        versions = {str(x.get("model_version")) for x in client.task_predictions(int(task["id"]))}
        if model_version not in versions:
            try:
                payload = _task_payload(item, item.image, pred, blobs, image_url)["predictions"][0]
                made = client.create_prediction(int(task["id"]), payload["result"], model_version, pred.score)
                records.append(LabelTaskRecord(project.label_project_id, iid, int(task["id"]), pred.id, made.get("id")))
                report.updated += 1
            except Exception as exc:  # recorded per item; the push goes on
                report.failed.append((iid, f"{type(exc).__name__}: {exc}"))
            continue
        records.append(LabelTaskRecord(project.label_project_id, iid, int(task["id"]), pred.id))
        report.reconciled += 1
    if records:
        repo.record_label_tasks(session, records)
        session.commit()

    todo = list(by_item.values())
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        tasks, sent = [], []
        for item, pred in batch:
            try:
                tasks.append(_task_payload(item, item.image, pred, blobs, image_url))
                sent.append((item, pred))
            except Exception as exc:  # a missing blob, an image outside the root: recorded, the batch goes on
                report.failed.append((item.id, f"{type(exc).__name__}: {exc}"))
        if not tasks:
            continue
        try:
            task_ids = client.import_tasks(project.ls_project_id, tasks)
            pairs = list(zip(sent, task_ids, strict=True))
        except LabelStudioUnavailableError as exc:
            # Unknown outcome (a timeout, a 500): find what arrived by item_id, import the rest once more.
            log.warning("push: import of %d tasks had an unknown outcome (%s); reconciling by item_id", len(sent), exc)
            wanted = {item.id for item, _ in sent}
            arrived = _tasks_by_item(client, project, wanted)
            for pause in UNKNOWN_OUTCOME_SETTLE_S if not arrived else ():
                # a timed-out import may still be running in Label Studio (imports are all-or-nothing): give it time
                # to land before importing again, or it lands later as a duplicate of the re-import
                time.sleep(pause)
                arrived = _tasks_by_item(client, project, wanted)
                if arrived:
                    break
            pairs = [((item, pred), arrived[item.id]["id"]) for item, pred in sent if item.id in arrived]
            report.reconciled += len(pairs)
            rest = [(t, ip) for t, ip in zip(tasks, sent, strict=True) if ip[0].id not in arrived]
            if rest:
                ids = client.import_tasks(project.ls_project_id, [t for t, _ in rest])
                pairs += [(ip, tid) for (_, ip), tid in zip(rest, ids, strict=True)]
                report.pushed += len(ids)
            task_ids = []
        repo.record_label_tasks(
            session, [LabelTaskRecord(project.label_project_id, item.id, tid, pred.id) for (item, pred), tid in pairs]
        )
        session.commit()
        report.pushed += len(task_ids)
        log.info("push: %d tasks imported into project %d", len(task_ids), project.ls_project_id)
    report.requests = client.requests_made - req0
    report.seconds = time.perf_counter() - t0
    return report
