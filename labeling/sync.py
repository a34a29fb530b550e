"""Bring annotations back from Label Studio: by polling since the project's watermark, or one webhook event at a time.

Each Label Studio annotation becomes an ``Annotation`` row (storage.repo.upsert_annotations), which also re-decides
the item and creates, updates or withdraws its ``Triplet``:

* verdict from the ``verdict`` choice: accept / no target / reject;
* mask: the union of the annotation's brush regions (decoded with :mod:`labeling.brush`, stored as a blob);
  "no target" is stored as a verified EMPTY mask whatever was drawn; a reject keeps its mask when there is one;
* annotator (Label Studio user), lead time, IoU against the pre-label that was pushed (both empty -> 1.0);
* a deleted annotation (webhook, or missing from its task when polling) is retracted; a cancelled (skipped) one too;
* the item is then re-decided from ALL its live annotations (storage.consensus): with overlap N >= 2 by verdict
  majority and the medoid mask, or into the adjudication queue (labeling.adjudication), whose review project this
  sync also reads; a reviewer's decision is final. Edits and deletions after a consensus re-decide it; snapshots
  already created keep their members (they freeze triplet ids and mask hashes).

Malformed annotations (no verdict, a brush region of the wrong size, an unknown label, a broken RLE, an accept without
a mask) are recorded in the report, per annotation, and the sync goes on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from labeling.adjudication import push_adjudication, review_handle
from labeling.brush import BrushRLEError, rle_to_mask
from labeling.client import LabelStudioClient
from labeling.priority import reprioritize, uses_uncertainty
from labeling.project import MASK_FROM, TARGET_LABEL, VERDICT_CHOICES, VERDICT_FROM, ProjectHandle
from storage import repo
from storage.blobs import BlobStore
from storage.maskcodec import decode_mask, encode_mask
from storage.models import Annotation, Item, LabelTask
from storage.priority import full_cells, stratum_targets
from storage.records import AnnotationRecord, LabelTaskRecord

log = logging.getLogger(__name__)


class MalformedAnnotationError(ValueError):
    """An annotation whose result cannot be turned into a verdict and mask."""


@dataclass
class SyncReport:
    tasks_seen: int = 0
    upserted: int = 0  # annotations new or changed since they were stored
    unchanged: int = 0  # read again (the watermark's overlap, a full sync) and already stored as they are
    retracted: int = 0
    skipped_tasks: list[tuple[int, str]] = field(default_factory=list)  # (LS task id, reason)
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (LS annotation id, reason)
    watermark: datetime | None = None
    review: SyncReport | None = None  # the sync of the project's review (adjudication) project, when it has one
    adjudication_pushed: int = 0  # items sent to the review project by this sync
    reprioritized: int = 0  # prediction scores moved in the label stream (labeling.priority)


def parse_time(value: str) -> datetime:
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {value!r}")
    return t


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def parse_result(result: Iterable[Mapping[str, Any]], height: int, width: int) -> tuple[str, np.ndarray | None]:
    """(verdict, mask or None) from an annotation's result list; raises MalformedAnnotationError."""
    verdicts: list[str] = []
    mask: np.ndarray | None = None
    for region in result or []:
        if not isinstance(region, Mapping):
            raise MalformedAnnotationError(f"result entry is not an object: {region!r:.80}")
        kind = str(region.get("type", "")).lower()
        value = region.get("value") or {}
        if region.get("from_name") == VERDICT_FROM and kind == "choices":
            for choice in value.get("choices") or []:
                if choice not in VERDICT_CHOICES:
                    raise MalformedAnnotationError(f"unknown verdict {choice!r}")
                verdicts.append(VERDICT_CHOICES[choice])
        elif kind == "brushlabels":
            labels = value.get("brushlabels") or []
            unknown = [lab for lab in labels if lab != TARGET_LABEL]
            if region.get("from_name") != MASK_FROM or unknown:
                raise MalformedAnnotationError(
                    f"brush region {region.get('from_name')!r} with unknown labels {unknown or labels}"
                )
            ow, oh = region.get("original_width"), region.get("original_height")
            if (ow, oh) != (width, height):
                raise MalformedAnnotationError(f"brush region is {ow}x{oh}, the image is {width}x{height}")
            if value.get("format", "rle") != "rle" or "rle" not in value:
                raise MalformedAnnotationError(f"brush region without an RLE (format {value.get('format')!r})")
            try:
                part = rle_to_mask(value["rle"], height, width)
            except (BrushRLEError, ValueError) as exc:
                raise MalformedAnnotationError(f"brush RLE: {exc}") from None
            mask = part if mask is None else (mask | part)
        elif kind == "polygonlabels":  # a polygon pre-label edited vertex by vertex (labeling.polygons)
            part = _polygon_part(region, value, height, width)
            mask = part if mask is None else (mask | part)
    if len(set(verdicts)) != 1:
        raise MalformedAnnotationError("no verdict chosen" if not verdicts else f"several verdicts {verdicts}")
    return verdicts[0], mask


def _polygon_part(region: Mapping[str, Any], value: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    from labeling.polygons import POLYGON_FROM, polygon_region_to_mask

    labels = value.get("polygonlabels") or []
    if region.get("from_name") != POLYGON_FROM or [lab for lab in labels if lab != TARGET_LABEL]:
        raise MalformedAnnotationError(f"polygon region {region.get('from_name')!r} with labels {labels}")
    try:
        return polygon_region_to_mask(value.get("points") or [], height, width)
    except (ValueError, TypeError, IndexError) as exc:
        raise MalformedAnnotationError(f"polygon region: {exc}") from None


def _annotator(annotation: Mapping[str, Any]) -> str | None:
    name = str(annotation.get("created_username") or "").strip()
    if name:
        return name.rsplit(",", 1)[0].strip() or name
    by = annotation.get("completed_by")
    if isinstance(by, Mapping):
        return str(by.get("email") or by.get("id"))
    return str(by) if by is not None else None


class _Context:
    """Per-sync caches: pre-label masks by prediction."""

    def __init__(self, session: Session, blobs: BlobStore) -> None:
        self.session = session
        self.blobs = blobs
        self._prelabel: dict[int, np.ndarray | None] = {}

    def prelabel(self, label_task: LabelTask, shape: tuple[int, int]) -> np.ndarray | None:
        pred = label_task.prediction
        if pred is None:
            return None
        if pred.id not in self._prelabel:
            self._prelabel[pred.id] = (
                decode_mask(self.blobs.get(pred.mask_sha256), shape=shape)
                if pred.mask_sha256
                else np.zeros(shape, dtype=bool)
            )
        return self._prelabel[pred.id]


def annotation_record(ctx: _Context, label_task: LabelTask, annotation: Mapping[str, Any]) -> AnnotationRecord:
    image = label_task.item.image
    h, w = int(image.height), int(image.width)
    verdict, mask = parse_result(annotation.get("result") or [], h, w)
    if verdict == "no_target":
        mask = np.zeros((h, w), dtype=bool)  # a verified empty mask
    if verdict == "accept" and (mask is None or not mask.any()):
        raise MalformedAnnotationError("accepted without a mask (choose 'no target' for an empty one)")
    sha = area = score = None
    if mask is not None:
        sha = ctx.blobs.put(encode_mask(mask))
        area = int(np.count_nonzero(mask))
        pre = ctx.prelabel(label_task, (h, w))
        score = iou(mask, pre) if pre is not None else None
    lead = annotation.get("lead_time")
    return AnnotationRecord(
        ls_annotation_id=int(annotation["id"]),
        label_task_id=label_task.id,
        verdict=verdict,
        created_at=parse_time(annotation["created_at"]),
        updated_at=parse_time(annotation["updated_at"]),
        mask_sha256=sha,
        mask_area=area,
        annotator=_annotator(annotation),
        lead_time=float(lead) if isinstance(lead, int | float) and lead >= 0 else None,
        iou_vs_prelabel=score,
    )


def _label_task_for(session: Session, project: ProjectHandle, task: Mapping[str, Any]) -> LabelTask:
    """The LabelTask of a Label Studio task; a task pushed but never recorded (crash) is recorded from item_id."""
    tid = int(task["id"])
    lt = repo.label_task_by_ls_id(session, project.label_project_id, tid)
    if lt is not None:
        return lt
    iid = (task.get("data") or {}).get("item_id")
    if not isinstance(iid, int) or session.get(Item, iid) is None:
        raise LookupError(f"task {tid} has no known item_id ({iid!r}): not pushed by geolabel")
    repo.record_label_tasks(session, [LabelTaskRecord(project.label_project_id, iid, tid)])
    lt = repo.label_task_by_ls_id(session, project.label_project_id, tid)
    assert lt is not None
    return lt


def _apply_task(
    ctx: _Context, project: ProjectHandle, task: Mapping[str, Any], report: SyncReport, *, full_list: bool,
    skip_unchanged: bool = True,
) -> None:
    """Upsert the task's annotations; with ``full_list`` also retract stored ones no longer in the task. With
    ``skip_unchanged``, an annotation stored with the same ``updated_at`` is counted unchanged and not decoded or
    re-decided again (a full sync passes False: it re-decides every item, e.g. after new consensus settings)."""
    session = ctx.session
    try:
        lt = _label_task_for(session, project, task)
    except LookupError as exc:
        report.skipped_tasks.append((int(task.get("id", 0)), str(exc)))
        return
    records: list[AnnotationRecord] = []
    live: set[int] = set()
    cancelled: list[int] = []
    annotations = task.get("annotations") or []
    stored_at = repo.stored_annotation_versions(session, (a["id"] for a in annotations if "id" in a))
    for ann in annotations:
        aid = int(ann["id"])
        if ann.get("was_cancelled"):
            cancelled.append(aid)
            continue
        live.add(aid)
        try:
            if skip_unchanged and aid in stored_at and stored_at[aid] >= parse_time(ann["updated_at"]):
                report.unchanged += 1  # stored as it is: nothing to decode, store or re-decide
                continue
            records.append(annotation_record(ctx, lt, ann))
        except (MalformedAnnotationError, KeyError, TypeError, ValueError) as exc:
            report.malformed.append((aid, f"{type(exc).__name__}: {exc}"))
            log.warning("sync: annotation %d of task %s is malformed: %s", aid, task.get("id"), exc)
    if records:
        repo.upsert_annotations(session, records, ctx.blobs)
        report.upserted += len(records)
    gone = list(cancelled)
    if full_list:
        stored = session.scalars(
            sa.select(Annotation.ls_annotation_id).where(
                Annotation.label_task_id == lt.id, Annotation.retracted.is_(False)
            )
        ).all()
        gone += [a for a in stored if a not in live]
    if gone:
        report.retracted += repo.retract_annotations(session, gone, ctx.blobs)


def sync_annotations(
    client: LabelStudioClient,
    session: Session,
    blobs: BlobStore,
    project: ProjectHandle,
    *,
    full: bool = False,
    overlap: timedelta = timedelta(seconds=2),
    queue_targets: Mapping[tuple[str, str], int] | None = None,
) -> SyncReport:
    """Poll the project's tasks updated since its watermark (all with ``full``) and store their annotations (those
    stored as they are count ``unchanged``; a ``full`` sync stores and re-decides them all again).

    Commits after every task page; the watermark (the newest task ``updated_at`` seen) only moves forward, and a
    small ``overlap`` re-reads the last moments before it (the upserts are idempotent).

    A project with a review project (labeling.adjudication) then syncs that one too (the reviewers' decisions) and
    sends the items newly in the adjudication queue to it. When a domain x level stratum reached (or fell below) its
    target (``queue_targets``, default GeoSeg-Bench's 810) and the project's label stream is uncertainty sampling,
    that stratum's tasks get their new queue scores (labeling.priority).
    """
    report = SyncReport()
    ctx = _Context(session, blobs)
    targets = dict(queue_targets) if queue_targets else stratum_targets()
    full_before = full_cells(session, targets)
    watermark = None if full else repo.get_watermark(session, project.label_project_id)
    since = watermark - overlap if watermark is not None else None
    newest = watermark
    for n, task in enumerate(
        client.iter_tasks(project.ls_project_id, fields="all", updated_after=since, page_size=100), 1
    ):
        report.tasks_seen += 1
        _apply_task(ctx, project, task, report, full_list=True, skip_unchanged=not full)
        updated = task.get("updated_at")
        if updated:
            t = parse_time(updated)
            newest = t if newest is None or t > newest else newest
        if n % 100 == 0:
            session.commit()
    if newest is not None:
        report.watermark = repo.advance_watermark(session, project.label_project_id, newest)
    session.commit()
    review = review_handle(session, project)
    if review is not None:
        report.review = sync_annotations(client, session, blobs, review, full=full, overlap=overlap,
                                         queue_targets=targets)
        report.adjudication_pushed = push_adjudication(client, session, blobs, project, review)
    flipped = full_before ^ full_cells(session, targets)
    if flipped:  # a stratum filled up (or fell below target): its tasks move in the label stream
        mv = uses_uncertainty(client, project)
        if mv is not None:
            report.reprioritized = reprioritize(client, session, project, mv, targets=targets, cells=flipped)
    return report


# --- webhook events -------------------------------------------------------------------------------------------------

CREATED_UPDATED = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETED = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


def apply_webhook_event(
    session: Session, blobs: BlobStore, project: ProjectHandle, payload: Mapping[str, Any]
) -> SyncReport:
    """Apply one Label Studio webhook payload; commits. Events for other projects are ignored."""
    report = SyncReport()
    action = payload.get("action")
    proj = payload.get("project") or {}
    if isinstance(proj, Mapping) and proj.get("id") not in (None, project.ls_project_id):
        report.skipped_tasks.append((0, f"event for project {proj.get('id')}, not {project.ls_project_id}"))
        return report
    if action in CREATED_UPDATED:
        anns = payload.get("annotations") or ([payload["annotation"]] if payload.get("annotation") else [])
        task = payload.get("task") or {}
        ctx = _Context(session, blobs)
        for ann in anns:
            t = dict(task) if task else {"id": ann.get("task")}
            t["id"] = t.get("id") or ann.get("task")
            t["annotations"] = [ann]
            _apply_task(ctx, project, t, report, full_list=False)
    elif action in DELETED:
        ids = [int(a["id"]) for a in payload.get("annotations") or [] if isinstance(a, Mapping) and "id" in a]
        report.retracted += repo.retract_annotations(session, ids, blobs)
    else:
        report.skipped_tasks.append((0, f"ignored action {action!r}"))
    session.commit()
    return report
