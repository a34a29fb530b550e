"""COCO export from a real database and blob store: pycocotools loads it, annToMask is exact, COCOeval AP is 1.0."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from geoseg.evaluation.bench import read_benchmark
from storage.blobs import LocalBlobStore
from storage.datasets.coco import ExportError, export_coco
from storage.datasets.select import DatasetFilter, SelectionError
from storage.db import create_all, make_engine, session_scope
from tests.fixtures.datasets import T0, seed_from_bench
from tests.fixtures.evaluation import load_make_bench

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    bench = read_benchmark(load_make_bench().make_bench(root / "bench", per_domain=6, size=40))
    engine = make_engine(f"sqlite:///{root / 'db.sqlite'}")
    create_all(engine)
    blobs = LocalBlobStore(root / "blobs")
    with session_scope(engine) as s:
        seeded = seed_from_bench(s, blobs, bench)
    yield engine, blobs, seeded, root
    engine.dispose()


def _coco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_export_loads_masks_exact_and_self_eval_ap_is_one(store, tmp_path):
    from pycocotools.cocoeval import COCOeval

    engine, blobs, seeded, _ = store
    with session_scope(engine) as s:
        res = export_coco(s, blobs, tmp_path / "out", images="copy")
    assert res.n_annotations == len(seeded.triplet_masks) > 10
    assert res.n_no_target == seeded.n_no_target > 0
    coco = _coco(res.path)
    assert len(coco.getAnnIds()) == res.n_annotations
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), seeded.triplet_masks[ann["id"]])
        assert ann["area"] == seeded.triplet_masks[ann["id"]].sum()
        assert ann["query"] and ann["level"] in ("L1", "L2", "L3") and ann["domain"] and ann["verdict"] == "accept"
    # the export scored against itself: every detection is a perfect match
    dets = [{"image_id": a["image_id"], "category_id": 1, "segmentation": a["segmentation"], "score": 1.0}
            for a in coco.loadAnns(coco.getAnnIds())]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    data = json.loads(res.path.read_text())
    assert len(data["refs"]) == res.n_annotations
    assert {r["ann_id"] for r in data["refs"]} == set(seeded.triplet_masks)
    assert all(r["sentences"][0]["sent"] for r in data["refs"])
    # no-target decisions: image listed, query kept, no annotation
    img_ids = {i["id"] for i in data["images"]}
    ann_imgs = {a["image_id"] for a in data["annotations"]}
    assert all(nt["image_id"] in img_ids and nt["query"] for nt in data["no_target"])
    assert any(nt["image_id"] not in ann_imgs for nt in data["no_target"])
    # images copied beside the json, one file per image
    assert res.images_copied == len(data["images"])
    assert all((res.path.parent / "images" / i["file_name"]).is_file() for i in data["images"])


def test_filters(store, tmp_path):
    engine, blobs, seeded, _ = store
    with session_scope(engine) as s:
        urban = export_coco(s, blobs, tmp_path / "u", DatasetFilter(domains=("Urban",), levels=("L1",)))
        data = json.loads(urban.path.read_text())
        assert data["annotations"] and {(a["domain"], a["level"]) for a in data["annotations"]} == {("Urban", "L1")}
        ranged = export_coco(s, blobs, tmp_path / "r", DatasetFilter(since=T0, until=T0 + timedelta(days=4)))
        assert 0 < ranged.n_annotations < len(seeded.triplet_masks)
        none = export_coco(s, blobs, tmp_path / "n", DatasetFilter(model_version="other-model"))
        assert none.n_annotations == 0 and none.n_images == 0
        _coco(none.path)  # an empty export is still valid COCO
        mv = export_coco(s, blobs, tmp_path / "m", DatasetFilter(model_version="geoseg-test-v1"))
        assert mv.n_annotations == len(seeded.triplet_masks)
        with pytest.raises(SelectionError, match="no snapshot"):
            export_coco(s, blobs, tmp_path / "x", DatasetFilter(snapshot="nope"))
    with pytest.raises(SelectionError, match="timezone"):
        DatasetFilter(since=T0.replace(tzinfo=None))
    with pytest.raises(SelectionError, match="levels"):
        DatasetFilter(levels=("L7",))


def test_missing_mask_blob_fails_clearly_or_is_skipped(store, tmp_path):
    engine, blobs, seeded, root = store
    broken = LocalBlobStore(root / "empty-blobs")
    with session_scope(engine) as s:
        with pytest.raises(ExportError, match="triplet"):
            export_coco(s, broken, tmp_path / "b")
        assert not (tmp_path / "b" / "instances.json").exists()
        res = export_coco(s, broken, tmp_path / "b", on_error="skip")
    assert res.n_annotations == 0 and len(res.skipped) == len(seeded.triplet_masks)
    assert json.loads(res.path.read_text())["skipped"]


def test_export_with_s3_blobs_and_s3_images(tmp_path, s3_client, s3_bucket):
    """Masks in an S3 blob store and images under s3:// URIs (a real moto_server): the export copies the images
    from S3, checks their sha256, and the masks still come back exactly."""
    import hashlib

    import sqlalchemy as sa

    from storage.blobs import S3BlobStore
    from storage.models import Image

    bench = read_benchmark(load_make_bench().make_bench(tmp_path / "bench", per_domain=1, size=32))
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_all(engine)
    blobs = S3BlobStore(s3_bucket, "blobs", s3_client)
    with session_scope(engine) as s:
        seeded = seed_from_bench(s, blobs, bench)
        for img in s.scalars(sa.select(Image)):
            data = Path(img.uri).read_bytes()
            assert hashlib.sha256(data).hexdigest() == img.sha256
            key = f"imagery/{img.sha256[:8]}.png"
            s3_client.put_object(Bucket=s3_bucket, Key=key, Body=data)
            img.uri = f"s3://{s3_bucket}/{key}"
    with session_scope(engine) as s:
        res = export_coco(s, blobs, tmp_path / "out", images="link", s3_client=s3_client)
    engine.dispose()
    assert res.images_copied == res.n_images > 0 and res.images_linked == 0  # S3 sources cannot be linked
    coco = _coco(res.path)
    for ann in coco.loadAnns(coco.getAnnIds()):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), seeded.triplet_masks[ann["id"]])
    for img in coco.dataset["images"]:
        assert img["source_uri"].startswith("s3://")
        data = (res.path.parent / "images" / img["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == img["sha256"]
