"""Push GeoSeg predictions to Label Studio as tasks with pre-labels, in bulk and idempotently.

Each task carries ``data = {image, query, item_id, image_sha256}`` and one prediction: the mask as a brush RLE region
(:mod:`labeling.brush`) with ``model_version`` and ``score``. Tasks go in bulk imports of ``batch_size`` tasks (one
request each); the database records each batch (``LabelTask``) right after its request and commits.

Idempotent, also after a crash between an import and its database write: before importing, the project's tasks are
listed once and any task whose ``data.item_id`` is pending is *reconciled* (recorded in the database) instead of being
imported again. An item already pushed with an older model version gets the new pre-label added to its existing task.

Exactly once across overlapping runs (design §9): before anything is imported, the pending items are claimed
(``storage.claims.Lease``, kind ``"push"``, key ``(label project id, item id)``); items another live run holds, or has
pushed since the work list was read, are skipped (``PushReport.skipped``). The project listing for reconciliation is
read after the claim, so no live run is importing the items it reconciles; each batch's ``LabelTask`` rows are written
with their claims released in one transaction. A run killed after an import leaves an expiring claim: the run that
takes it over finds the task by ``item_id`` and records it instead of importing it again.

Image URLs (:class:`ImageUrlResolver`): local files through a local-files storage per imagery root
(``/data/local-files/?d=<path below the document root>``), ``s3://`` images as storage URIs that the project's S3
source storage presigns at view time (:mod:`labeling.storages`), http(s) URLs unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session

from labeling.brush import mask_to_rle
from labeling.client import LabelStudioClient, LabelStudioUnavailableError
from labeling.polygons import prelabel_result
from labeling.project import IMAGE_TO, MASK_FROM, TARGET_LABEL, ProjectHandle
from storage import claims, repo
from storage.blobs import BlobStore
from storage.maskcodec import decode_mask
from storage.models import Image, Item, Prediction
from storage.records import LabelTaskRecord
from storage.repo.base import chunked

log = logging.getLogger(__name__)


class ImageUrlError(ValueError):
    """An image cannot be given to Label Studio by URL."""


class ImageUrlResolver:
    """Image URI (absolute path, ``s3://bucket/key`` or http(s)) -> what a task's ``data.image`` holds.

    * Local files below one of ``imagery_root`` (one path or several): ``/data/local-files/?d=<path below the
      document root>``, served by Label Studio through the project's local-files storage for that root. The document
      root is Label Studio's LOCAL_FILES_DOCUMENT_ROOT (``LabelStudioServer.document_root``, what the server
      runs with); by default the filesystem root, what ``labeling.server`` starts a new loopback server with.
      Symlinks are resolved first, so a link out of the roots is refused.
    * ``s3://bucket/key``: the URI itself (default, ``s3_mode="storage"``): the project's S3 source storage presigns
      it each time the task is viewed, so no link in a task expires. ``s3_mode="presign"`` (the earlier behaviour,
      only for a Label Studio without the storage) presigns at push time with ``s3_client`` for ``presign_expires``.
    * http(s) URLs unchanged.

    :attr:`needs` collects the storages the returned values need (``labeling.storages.StorageNeeds``); call
    ``resolver.needs.ensure(client, project_id, s3_connection)`` before the tasks are imported.
    """

    def __init__(
        self,
        imagery_root: str | Path | Sequence[str | Path] | None = None,
        *,
        document_root: str | Path | None = None,
        s3_client: Any = None,
        s3_mode: str = "storage",
        presign_expires: int = 7 * 24 * 3600,
    ) -> None:
        from labeling.storages import StorageNeeds

        if isinstance(imagery_root, (str, Path)):
            imagery_root = [imagery_root]
        self.roots = [Path(r).expanduser().resolve() for r in imagery_root or ()]
        self.imagery_root = self.roots[0] if self.roots else None
        if document_root is not None:
            self.document_root: Path | None = Path(document_root).expanduser().resolve()
        else:
            self.document_root = Path(self.imagery_root.anchor) if self.imagery_root else None
        if s3_mode not in ("storage", "presign"):
            raise ValueError(f"s3_mode must be 'storage' or 'presign', got {s3_mode!r}")
        self.s3_mode = s3_mode
        self.s3_client = s3_client
        self.presign_expires = int(presign_expires)
        self.needs = StorageNeeds()

    @classmethod
    def for_server(cls, server, **kw: Any) -> ImageUrlResolver:  # noqa: ANN001 - labeling.server.LabelStudioServer
        kw.setdefault("document_root", server.document_root)
        return cls(server.imagery_root or server.root, **kw)

    def __call__(self, uri: str) -> str:
        if uri.startswith(("http://", "https://")):
            return uri
        if uri.startswith("s3://"):
            from labeling.storages import parse_s3_uri

            try:
                bucket, key = parse_s3_uri(uri)
            except ValueError as exc:
                raise ImageUrlError(str(exc)) from None
            if self.s3_mode == "storage":
                self.needs.buckets.add(bucket)
                return uri
            if self.s3_client is None:
                raise ImageUrlError(f"{uri}: an S3 image needs an S3 client to presign its URL")
            return self.s3_client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.presign_expires
            )
        if not self.roots or self.document_root is None:
            raise ImageUrlError(f"{uri}: local images need the imagery directory Label Studio serves")
        path = Path(uri).expanduser().resolve()
        root = next((r for r in self.roots if r == path or r in path.parents), None)
        if root is None:
            shown = ", ".join(map(str, self.roots))
            raise ImageUrlError(
                f"{uri} is outside the imagery root {shown} that Label Studio serves; "
                "start the server with that imagery directory or move the image below it"
            )
        try:
            rel = path.relative_to(self.document_root)
        except ValueError:
            raise ImageUrlError(
                f"{uri} is outside Label Studio's LOCAL_FILES_DOCUMENT_ROOT {self.document_root}: the server can "
                "only serve files below it (restart it with a document root above this imagery)"
            ) from None
        self.needs.local_roots.add(root)
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
    skipped: int = 0  # items another run holds (a claim) or pushed since the work list was read
    taken_over: int = 0  # items whose dead run's expired claim this push took over
    seconds_claim: float = 0.0

    @property
    def tasks_per_second(self) -> float:
        return self.pushed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PushJob:
    """What one task payload needs, copied out of the ORM rows (plain values: safe to use in a worker thread while
    the session commits and expires its objects)."""

    item_id: int
    query: str
    image_uri: str
    image_sha256: str
    height: int
    width: int
    prediction_id: int
    model_version: str
    mask_sha256: str | None
    score: float | None
    scene: str | None = None  # a chip's scene and pixel window ("scene.tif [col, row, w, h]"), shown as a task column

    @classmethod
    def of(cls, item: Item, image: Image, pred: Prediction) -> PushJob:
        return cls(
            item_id=int(item.id),
            query=item.query,
            image_uri=image.uri,
            image_sha256=image.sha256,
            height=image.height,  # checked per item by decode_mask (a bad row fails that item only)
            width=image.width,
            prediction_id=int(pred.id),
            model_version=pred.model_version,
            mask_sha256=pred.mask_sha256,
            score=pred.score,
            scene=(f"{image.scene_uri} [{image.window_col}, {image.window_row}, {image.width}, {image.height}]"
                   if image.scene_uri else None),
        )


def job_payload(
    job: PushJob, blobs: BlobStore, image_url: Callable[[str], str], region_format: str = "brush"
) -> dict[str, Any]:
    """The Label Studio task (data + one prediction) of ``job``; the pre-label as a brush region (default) or as
    polygons (``region_format="polygon"``, :mod:`labeling.polygons`).

    The stored mask is decoded in whatever memory order is cheapest (COCO RLE comes out Fortran-ordered) and brush
    encoded from that without a transpose: the same bytes as from the C-ordered mask.
    """
    if job.mask_sha256:
        mask = decode_mask(blobs.get(job.mask_sha256), shape=(job.height, job.width), contiguous=False)
        result = brush_result(mask) if region_format == "brush" else prelabel_result(mask, region_format)
    else:
        result = []
    prediction: dict[str, Any] = {"model_version": job.model_version, "result": result}
    if job.score is not None:
        prediction["score"] = float(job.score)
    return {
        "data": {
            "image": image_url(job.image_uri),
            "query": job.query,
            "item_id": job.item_id,
            "image_sha256": job.image_sha256,
            **({"scene": job.scene} if job.scene else {}),  # chips: Label Studio's Data Manager shows it as a column
        },
        "predictions": [prediction],
    }


def _build_batch(
    batch: list[PushJob], blobs: BlobStore, image_url: Callable[[str], str], region_format: str = "brush"
) -> tuple[list[dict[str, Any]], list[PushJob], list[tuple[int, str]]]:
    """Payloads of one batch: (tasks, their jobs, (item id, reason) of the items whose payload failed)."""
    tasks: list[dict[str, Any]] = []
    sent: list[PushJob] = []
    failed: list[tuple[int, str]] = []
    for job in batch:
        try:
            tasks.append(job_payload(job, blobs, image_url, region_format))
            sent.append(job)
        except Exception as exc:  # a missing blob, an image outside the root: recorded, the batch goes on
            failed.append((job.item_id, f"{type(exc).__name__}: {exc}"))
    return tasks, sent, failed


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


class _Done:
    """An already computed result with the ``Future.result()`` interface."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def _submit(
    pool: ThreadPoolExecutor | None,
    batches: list[list[PushJob]],
    k: int,
    blobs: BlobStore,
    image_url: Callable[[str], str],
    region_format: str = "brush",
) -> Any:
    if k >= len(batches):
        return _Done(([], [], []))
    if pool is None:
        return _Done(_build_batch(batches[k], blobs, image_url, region_format))
    return pool.submit(_build_batch, batches[k], blobs, image_url, region_format)


def _import_batch(
    client: LabelStudioClient,
    session: Session,
    project: ProjectHandle,
    tasks: list[dict[str, Any]],
    sent: list[PushJob],
    report: PushReport,
    lease: claims.Lease | None = None,
) -> None:
    """Import one batch and record its tasks (reconciling by item_id after an import with an unknown outcome)."""
    try:
        task_ids = client.import_tasks(project.ls_project_id, tasks)
        pairs = list(zip(sent, task_ids, strict=True))
    except LabelStudioUnavailableError as exc:
        # Unknown outcome (a timeout, a 500): find what arrived by item_id, import the rest once more.
        log.warning("push: import of %d tasks had an unknown outcome (%s); reconciling by item_id", len(sent), exc)
        wanted = {job.item_id for job in sent}
        arrived = _tasks_by_item(client, project, wanted)
        for pause in UNKNOWN_OUTCOME_SETTLE_S if not arrived else ():
            # a timed-out import may still be running in Label Studio (imports are all-or-nothing): give it time
            # to land before importing again, or it lands later as a duplicate of the re-import
            time.sleep(pause)
            arrived = _tasks_by_item(client, project, wanted)
            if arrived:
                break
        pairs = [(job, arrived[job.item_id]["id"]) for job in sent if job.item_id in arrived]
        report.reconciled += len(pairs)
        rest = [(t, job) for t, job in zip(tasks, sent, strict=True) if job.item_id not in arrived]
        if rest:
            ids = client.import_tasks(project.ls_project_id, [t for t, _ in rest])
            pairs += [(job, tid) for (_, job), tid in zip(rest, ids, strict=True)]
            report.pushed += len(ids)
        task_ids = []
    repo.record_label_tasks(
        session,
        [LabelTaskRecord(project.label_project_id, job.item_id, tid, job.prediction_id) for job, tid in pairs],
    )
    if lease is not None:  # the claims go with the task records: both committed or neither
        lease.release_in(session, [(project.label_project_id, job.item_id) for job, _ in pairs])
    session.commit()
    report.pushed += len(task_ids)
    log.info("push: %d tasks imported into project %d", len(task_ids), project.ls_project_id)


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
    overlap: bool = True,
    pending: Sequence[PushJob] | None = None,
    region_format: str = "brush",
    lease_s: float = claims.DEFAULT_TTL_S,
) -> PushReport:
    """Push every prediction of ``model_version`` not yet in the project; commits after each batch.

    ``overlap``: build the next batch's payloads in a worker thread while the current import is in flight (same
    requests, same order, same records; ``False`` builds them in this thread). ``pending``: ``PushJob.of`` of the
    rows of ``repo.predictions_awaiting_push(session, project.label_project_id, model_version)`` when the caller has
    just read them (saves the query; ``limit`` is then not applied). ``region_format``: ``brush`` (RLE, exact) or
    ``polygon`` (editable vertices; see :mod:`labeling.polygons` for the tolerance and the holes limitation).
    ``lease_s``: the claim lease (renewed while the push runs; see the module docstring). The session's open
    transaction is committed before claiming.
    """
    if region_format not in ("brush", "polygon"):
        raise ValueError(f"region_format must be 'brush' or 'polygon', got {region_format!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    req0 = client.requests_made
    report = PushReport()
    if pending is None:
        rows = repo.predictions_awaiting_push(session, project.label_project_id, model_version, limit=limit)
        # plain values, read once before any commit expires the ORM objects (and in this thread only)
        pending = [PushJob.of(item, item.image, pred) for item, pred in rows]
    if not pending:
        report.seconds = time.perf_counter() - t0
        return report
    session.commit()  # no open write of this session while the lease writes on its own connection (SQLite)
    lease = claims.Lease(
        session.get_bind(),
        "push",
        [(project.label_project_id, job.item_id) for job in pending],
        owner=claims.new_owner("push"),
        ttl_s=lease_s,
        verify=claims.unpushed({job.item_id: job.prediction_id for job in pending}),
    )
    with lease:
        held = {int(k[1]) for k in lease.held}
        report.skipped = len(lease.skipped) + len(lease.done)
        report.taken_over = len(lease.taken_over)
        report.seconds_claim = lease.claim_seconds
        if report.skipped:
            log.info("push: %d item(s) skipped: another run holds or has pushed them", report.skipped)
        try:
            _push_held(
                client,
                session,
                blobs,
                project,
                model_version,
                [j for j in pending if j.item_id in held],
                image_url=image_url,
                batch_size=batch_size,
                overlap=overlap,
                report=report,
                lease=lease,
                region_format=region_format,
            )
        except BaseException:
            session.rollback()  # before the lease releases on its own connection
            raise
    report.requests = client.requests_made - req0
    report.seconds = time.perf_counter() - t0
    return report


def _push_held(
    client: LabelStudioClient,
    session: Session,
    blobs: BlobStore,
    project: ProjectHandle,
    model_version: str,
    pending: list[PushJob],
    *,
    image_url: Callable[[str], str],
    batch_size: int,
    overlap: bool,
    report: PushReport,
    lease: claims.Lease,
    region_format: str = "brush",
) -> None:
    """Reconcile and import the claimed ``pending`` jobs (the body of :func:`push_predictions`)."""
    if not pending:  # everything held or pushed by other runs: not even the project listing is needed
        return
    by_item = {job.item_id: job for job in pending}

    # Reconcile: tasks already in Label Studio for pending items (a crash after the import, before the DB write,
    # or an older model version's task).
    existing = _tasks_by_item(client, project, set(by_item))
    records: list[LabelTaskRecord] = []
    for iid, task in existing.items():
        job = by_item.pop(iid)
        versions = {str(x.get("model_version")) for x in client.task_predictions(int(task["id"]))}
        if model_version not in versions:
            try:
                payload = job_payload(job, blobs, image_url, region_format)["predictions"][0]
                made = client.create_prediction(int(task["id"]), payload["result"], model_version, job.score)
                records.append(
                    LabelTaskRecord(project.label_project_id, iid, int(task["id"]), job.prediction_id, made.get("id"))
                )
                report.updated += 1
            except Exception as exc:  # recorded per item; the push goes on
                report.failed.append((iid, f"{type(exc).__name__}: {exc}"))
            continue
        records.append(LabelTaskRecord(project.label_project_id, iid, int(task["id"]), job.prediction_id))
        report.reconciled += 1
    if records:
        repo.record_label_tasks(session, records)
        lease.release_in(session, [(project.label_project_id, r.item_id) for r in records])
        session.commit()

    todo = list(by_item.values())
    batches = list(chunked(todo, batch_size))
    # The next batch's payloads (mask decode + brush encode) are built in a worker thread while the current import
    # request is in flight; imports, database writes and commits stay in this thread, in order.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-payloads") if overlap else None
    try:
        upcoming = _submit(pool, batches, 0, blobs, image_url, region_format)
        for k in range(len(batches)):
            tasks, sent, failed = upcoming.result()
            upcoming = _submit(pool, batches, k + 1, blobs, image_url, region_format)
            report.failed.extend(failed)
            if not tasks:
                continue
            _import_batch(client, session, project, tasks, sent, report, lease)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
