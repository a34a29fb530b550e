"""COCO export of verified triplets (``geolabel export coco``): ``instances.json`` plus, on request, the images.

Format (COCO "instances" + RefCOCO-style referring expressions)::

    {
      "info": {..., "filters": {...}, "no_target_doc": "..."},
      "licenses": [],
      "categories": [{"id": 1, "name": "target", "supercategory": "referring"}],
      "images": [{"id", "file_name", "width", "height", "source_uri", "sha256"[, "scene", "window"]}],
      "annotations": [{"id", "image_id", "category_id": 1, "segmentation": {"size": [H, W], "counts": str},
                       "area", "bbox": [x, y, w, h], "iscrowd": 0,
                       "query", "level", "domain", "phrase", "verdict", "model_version", "mask_sha256",
                       "triplet_id", "annotation_id"}],
      "refs": [{"ref_id", "ann_id", "image_id", "category_id", "split", "sent_ids", "sentences": [{"sent_id",
                "sent", "raw", "tokens"}]}],
      "no_target": [{"image_id", "query", "level", "domain", "verdict": "no_target", "model_version",
                     "annotation_id"}]
    }

One annotation per accepted (live) triplet; its id is the triplet id, and so is its ref's id. The segmentation is
pycocotools' compressed RLE (``mask.encode``) with ``counts`` as a str, so ``COCO.annToMask`` gives back the stored
mask exactly. "No target" decisions have no mask: their image is listed in ``images`` and the query (with level,
domain) in the top-level ``no_target`` list; they add no annotation and no ref (so COCOeval ignores them).

Streaming: the file is written piece by piece while database rows are read with ``yield_per``; masks are fetched one
at a time (with a small cache by hash). Memory stays flat in the number of triplets. The file appears atomically
(written beside and renamed), so a failed export leaves any previous export untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.blobs import BlobError, BlobStore
from storage.datasets.select import DatasetFilter, find_snapshot, no_target_annotation_ids, triplet_ids
from storage.maskcodec import MaskCodecError, decode_mask
from storage.models import Annotation, Image, Item, LabelTask, Prediction, SnapshotMember, Triplet

CATEGORY = {"id": 1, "name": "target", "supercategory": "referring"}
NO_TARGET_DOC = (
    "'no target' decisions (the annotator found nothing matching the query) have no mask: their image is in "
    "'images' and the query is in the top-level 'no_target' list; they have no annotation and no ref."
)
YIELD_PER = 1000
_FORMAT_EXT = {"GTiff": ".tif", "PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}

ImageMode = Literal["none", "copy", "link"]


class ExportError(RuntimeError):
    """The export could not be completed; the message names the triplet or image and why."""


@dataclass(frozen=True)
class CocoExportResult:
    path: Path
    n_images: int
    n_annotations: int
    n_no_target: int
    filters: DatasetFilter
    seconds: float
    images_copied: int = 0
    images_linked: int = 0
    skipped: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "images": self.n_images, "annotations": self.n_annotations,
            "no_target": self.n_no_target, "images_copied": self.images_copied, "images_linked": self.images_linked,
            "skipped": len(self.skipped), "seconds": round(self.seconds, 3), "filters": self.filters.describe(),
        }


def image_file_name(sha256: str, uri: str, fmt: str | None) -> str:
    """The file name an image gets beside the JSON: ``<first 16 hex of its sha256><extension>``."""
    ext = PurePosixPath(uri.split("?")[0]).suffix.lower()
    if not ext or len(ext) > 6:
        ext = _FORMAT_EXT.get(fmt or "", ".img")
    return f"{sha256[:16]}{ext}"


def coco_rle_entry(mask: np.ndarray) -> tuple[dict[str, Any], float, list[float]]:
    """pycocotools RLE (counts as str), area and [x, y, w, h] bbox of a (H, W) bool mask."""
    from pycocotools import mask as cocomask

    rle = cocomask.encode(np.asfortranarray(mask, dtype=np.uint8))
    area = float(cocomask.area(rle))
    bbox = [float(v) for v in cocomask.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}, area, bbox


class _MaskCache:
    """A small LRU of encoded segmentation entries by mask hash (equal masks share one blob)."""

    def __init__(self, blobs: BlobStore, size: int = 256) -> None:
        self.blobs, self.size = blobs, size
        self._d: OrderedDict[tuple[str, int, int], tuple[dict[str, Any], float, list[float]]] = OrderedDict()

    def get(self, sha: str, height: int, width: int) -> tuple[dict[str, Any], float, list[float]]:
        key = (sha, height, width)
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        mask = decode_mask(self.blobs.get(sha), shape=(height, width))
        entry = coco_rle_entry(mask)
        self._d[key] = entry
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return entry


def place_image(row: Any, dest: Path, mode: ImageMode, blobs: BlobStore, s3_client: Any) -> str:
    """Copy or link one image beside the JSON; returns "copied" or "linked". Bytes are checked against sha256."""
    from storage.ingest import image_bytes
    from storage.sources import SourceError

    if dest.exists():
        return "linked" if dest.is_symlink() else "copied"
    uri = str(row.uri)
    local = Path(uri[7:] if uri.startswith("file://") else uri)
    if mode == "link" and "://" not in uri.replace("file://", "") and local.is_file():
        os.symlink(local.resolve(), dest)
        return "linked"
    try:
        data = image_bytes(blobs, row.sha256, uri, client=s3_client)
    except (SourceError, BlobError) as exc:
        raise ExportError(f"image {row.id} ({uri}): not readable at its URI nor in the blob store: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != row.sha256:
        raise ExportError(f"image {row.id} ({uri}): its bytes no longer match the stored sha256; re-ingest it")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return "copied"


def _write_list(out: IO[str], name: str, first_key: bool = False) -> None:
    out.write(("" if first_key else ",\n") + json.dumps(name) + ": [")


def _snapshot_splits(session: Session, f: DatasetFilter) -> dict[int, str] | None:
    """Triplet id -> split for a snapshot export (only non-default splits kept in memory); None without one."""
    if not f.snapshot:
        return None
    snap = find_snapshot(session, f.snapshot)
    split_q = sa.select(SnapshotMember.triplet_id, SnapshotMember.split).where(SnapshotMember.snapshot_id == snap.id)
    return {tid: split for tid, split in session.execute(split_q.execution_options(yield_per=YIELD_PER))
            if split != "test"}


def _export_queries(t_ids: Any, nt_ids: Any) -> tuple[Any, Any]:
    """The image and annotation queries of an export (selected triplets, plus the images of no-target verdicts)."""
    image_ids = sa.select(Triplet.image_id).where(Triplet.id.in_(sa.select(t_ids.c.id)))
    if nt_ids is not None:
        image_ids = image_ids.union(
            sa.select(Item.image_id).join(Annotation, Annotation.item_id == Item.id)
            .where(Annotation.id.in_(sa.select(nt_ids.c.id))))
    image_q = (
        sa.select(Image.id, Image.sha256, Image.uri, Image.width, Image.height, Image.format, Image.scene_uri,
                  Image.window_col, Image.window_row)
        .where(Image.id.in_(image_ids)).order_by(Image.id)
    )
    ann_q = (
        sa.select(Triplet.id, Triplet.image_id, Triplet.query, Triplet.mask_sha256, Triplet.domain, Triplet.level,
                  Triplet.annotation_id, Annotation.verdict, Image.width, Image.height, Prediction.phrase,
                  Prediction.model_version, Triplet.agreement, Triplet.n_annotators, Triplet.adjudicated)
        .join(Annotation, Triplet.annotation_id == Annotation.id)
        .join(Image, Triplet.image_id == Image.id)
        .outerjoin(LabelTask, Annotation.label_task_id == LabelTask.id)
        .outerjoin(Prediction, LabelTask.prediction_id == Prediction.id)
        .where(Triplet.id.in_(sa.select(t_ids.c.id))).order_by(Triplet.id)
    )
    return image_q, ann_q


@dataclass
class _Counts:
    images: int = 0
    annotations: int = 0
    no_target: int = 0
    copied: int = 0
    linked: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _write_images(fh: IO[str], session: Session, image_q: Any, out: Path, images: ImageMode, blobs: BlobStore,
                  s3_client: Any, progress: Callable[[str, int], None] | None, n: _Counts) -> None:
    _write_list(fh, "images")
    for row in session.execute(image_q.execution_options(yield_per=YIELD_PER)):
        name = image_file_name(row.sha256, row.uri, row.format)
        entry = {"id": row.id, "file_name": name, "width": row.width, "height": row.height,
                 "source_uri": row.uri, "sha256": row.sha256}
        if row.scene_uri:  # a chip of a scene (storage.scenes): its scene and [col, row, width, height]
            entry.update(scene=row.scene_uri, window=[row.window_col, row.window_row, row.width, row.height])
        fh.write(("\n" if n.images == 0 else ",\n") + json.dumps(entry))
        n.images += 1
        if images != "none":
            how = place_image(row, out / "images" / name, images, blobs, s3_client)
            n.copied += how == "copied"
            n.linked += how == "linked"
        if progress and n.images % 1000 == 0:
            progress("images", n.images)
    fh.write("]")


def _write_annotations(fh: IO[str], rh: IO[str], session: Session, ann_q: Any, cache: _MaskCache,
                       on_error: str, split_of: dict[int, str] | None,
                       progress: Callable[[str, int], None] | None, n: _Counts) -> None:
    """The annotations list into ``fh`` and their refs into ``rh`` (appended after the annotations later)."""
    _write_list(fh, "annotations")
    for row in session.execute(ann_q.execution_options(yield_per=YIELD_PER)):
        try:
            seg, area, bbox = cache.get(row.mask_sha256, row.height, row.width)
        except (BlobError, MaskCodecError) as exc:
            if on_error == "raise":
                raise ExportError(f"triplet {row.id}: mask {row.mask_sha256[:12]}…: {exc}") from exc
            n.skipped.append({"triplet_id": row.id, "reason": str(exc)})
            continue
        ann = {
            "id": row.id, "image_id": row.image_id, "category_id": CATEGORY["id"], "segmentation": seg,
            "area": area, "bbox": bbox, "iscrowd": 0, "query": row.query, "level": row.level,
            "domain": row.domain, "phrase": row.phrase, "verdict": str(row.verdict),
            "model_version": row.model_version, "mask_sha256": row.mask_sha256, "triplet_id": row.id,
            "annotation_id": row.annotation_id, "agreement": row.agreement,
            "n_annotators": row.n_annotators, "adjudicated": row.adjudicated,
        }
        fh.write(("\n" if n.annotations == 0 else ",\n") + json.dumps(ann))
        ref = {
            "ref_id": row.id, "ann_id": row.id, "image_id": row.image_id, "category_id": CATEGORY["id"],
            "split": (split_of.get(row.id, "test") if split_of is not None else "train"),
            "sent_ids": [row.id],
            "sentences": [{"sent_id": row.id, "sent": row.query, "raw": row.query,
                           "tokens": row.query.split()}],
        }
        rh.write(("\n" if n.annotations == 0 else ",\n") + json.dumps(ref))
        n.annotations += 1
        if progress and n.annotations % 1000 == 0:
            progress("annotations", n.annotations)
    fh.write("]")


def _write_no_target(fh: IO[str], session: Session, nt_ids: Any, n: _Counts) -> None:
    _write_list(fh, "no_target")
    if nt_ids is not None:
        nt_q = (
            sa.select(Annotation.id, Item.image_id, Item.query, Item.level, Item.domain,
                      Prediction.model_version)
            .join(Item, Annotation.item_id == Item.id)
            .outerjoin(LabelTask, Annotation.label_task_id == LabelTask.id)
            .outerjoin(Prediction, LabelTask.prediction_id == Prediction.id)
            .where(Annotation.id.in_(sa.select(nt_ids.c.id))).order_by(Annotation.id)
        )
        for row in session.execute(nt_q.execution_options(yield_per=YIELD_PER)):
            e = {"image_id": row.image_id, "query": row.query, "level": row.level, "domain": row.domain,
                 "verdict": "no_target", "model_version": row.model_version, "annotation_id": row.id}
            fh.write(("\n" if n.no_target == 0 else ",\n") + json.dumps(e))
            n.no_target += 1
    fh.write("]")


def export_coco(
    session: Session,
    blobs: BlobStore,
    out_dir: str | Path,
    filters: DatasetFilter | None = None,
    *,
    images: ImageMode = "none",
    on_error: Literal["raise", "skip"] = "raise",
    s3_client: Any = None,
    progress: Callable[[str, int], None] | None = None,
    file_name: str = "instances.json",
) -> CocoExportResult:
    """Write ``out_dir/instances.json`` for the triplets selected by ``filters`` (see the module docstring).

    ``images``: ``"copy"`` / ``"link"`` put the images in ``out_dir/images/`` (link falls back to copy when the
    source is not a local file). ``on_error="skip"`` records a triplet whose mask blob is missing or corrupt in
    the result's ``skipped`` (and the JSON's top-level ``skipped`` list) instead of failing the export.
    """
    if images not in ("none", "copy", "link"):
        raise ValueError(f"images must be none, copy or link, got {images!r}")
    f = filters or DatasetFilter()
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if images != "none":
        (out / "images").mkdir(exist_ok=True)
    final = out / file_name
    tmp = out / f".{file_name}.partial"
    refs_tmp = out / f".{file_name}.refs.partial"

    t_ids = triplet_ids(session, f).subquery()
    nt_sel = no_target_annotation_ids(session, f)
    nt_ids = nt_sel.subquery() if nt_sel is not None else None
    split_of = _snapshot_splits(session, f)
    image_q, ann_q = _export_queries(t_ids, nt_ids)
    n = _Counts()
    try:
        with tmp.open("w", encoding="utf-8") as fh, refs_tmp.open("w", encoding="utf-8") as rh:
            info = {
                "description": "geolabel export of verified reasoning-segmentation triplets",
                "version": "1.0", "date_created": datetime.now(UTC).isoformat(), "filters": f.describe(),
                "no_target_doc": NO_TARGET_DOC,
            }
            fh.write('{"info": ' + json.dumps(info) + ',\n"licenses": [],\n"categories": [' + json.dumps(CATEGORY)
                     + "]")
            _write_images(fh, session, image_q, out, images, blobs, s3_client, progress, n)
            _write_annotations(fh, rh, session, ann_q, _MaskCache(blobs), on_error, split_of, progress, n)
        with tmp.open("a", encoding="utf-8") as fh, refs_tmp.open("r", encoding="utf-8") as rh:
            _write_list(fh, "refs")
            shutil.copyfileobj(rh, fh, 1 << 20)
            fh.write("]")
            _write_no_target(fh, session, nt_ids, n)
            if n.skipped:
                fh.write(',\n"skipped": ' + json.dumps(n.skipped))
            fh.write("}\n")
        os.replace(tmp, final)
    finally:
        for p in (tmp, refs_tmp):
            p.unlink(missing_ok=True)
    return CocoExportResult(
        path=final, n_images=n.images, n_annotations=n.annotations, n_no_target=n.no_target, filters=f,
        seconds=time.perf_counter() - t0, images_copied=n.copied, images_linked=n.linked, skipped=tuple(n.skipped),
    )
