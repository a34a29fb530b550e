"""Repository layer on SQLite and PostgreSQL: idempotent upserts, the flows' queries, item decisions from
annotations, triplets, immutable snapshots, and concurrent writers ending with one row."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import repo
from storage.db import make_engine, session_scope
from storage.maskcodec import decode_mask, encode_mask
from storage.models import (
    Annotation,
    IllegalTransitionError,
    Image,
    Item,
    ItemStatus,
    LabelTask,
    Prediction,
    Snapshot,
    SnapshotMember,
    Triplet,
)
from storage.records import (
    AnnotationRecord,
    ImageRecord,
    ItemRecord,
    LabelTaskRecord,
    PredictionRecord,
    TripletRecord,
)
from tests.fixtures.storage import add_annotation, add_image, add_item, add_prediction

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MV = "geoseg-tiny-abc123"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def image(i: int, **kw) -> ImageRecord:
    return ImageRecord(sha256=sha(f"img{i}"), uri=f"file:///data/img{i}.tif", width=64, height=48, **kw)


def all_rows(session: Session, model) -> list:
    session.expire_all()
    return list(session.scalars(sa.select(model).order_by(model.id)))


def snapshot_of(session: Session) -> dict:
    """Every row of every table as plain tuples (ids and content), to compare before/after a re-run."""
    out = {}
    for model in (Image, Item, Prediction, LabelTask, Annotation, Triplet):
        cols = [c.name for c in model.__table__.columns if c.name not in ("synced_at", "pushed_at")]
        out[model.__tablename__] = [tuple(getattr(r, c) for c in cols) for r in all_rows(session, model)]
    return out


def test_images_and_items_idempotent(session: Session):
    recs = [image(i, crs="EPSG:32633", transform=(0.5, 0, 500000, 0, -0.5, 4e6)) for i in range(5)]
    ids = repo.upsert_images(session, recs + recs[:2])
    assert len(ids) == 5 and len(set(ids.values())) == 5
    assert repo.upsert_images(session, list(reversed(recs))) == ids
    assert add_image(session, recs[3]) == ids[recs[3].sha256]
    im = repo.image_by_sha(session, recs[0].sha256)
    assert im.crs == "EPSG:32633" and im.transform == [0.5, 0, 500000, 0, -0.5, 4e6]
    items = [ItemRecord(image_id=v, query=f"the red roof {k[:4]}", level="l2", domain="Urban") for k, v in ids.items()]
    item_ids = repo.upsert_items(session, items)
    assert repo.upsert_items(session, items) == item_ids
    # the same query on another image is another item; whitespace is normalised
    extra = add_item(session, ItemRecord(image_id=ids[recs[0].sha256], query="  the red roof   "))
    assert extra not in item_ids.values()
    assert add_item(session, ItemRecord(image_id=ids[recs[0].sha256], query="the red roof")) == extra
    session.commit()
    assert repo.count_rows(session, Image) == 5 and repo.count_rows(session, Item) == 6
    assert {i.level for i in all_rows(session, Item)} == {"L2", None}
    assert repo.item_status_counts(session) == {"new": 6}


def test_bad_records_are_refused():
    with pytest.raises(ValueError, match="sha256"):
        ImageRecord(sha256="abc", uri="x", width=1, height=1)
    with pytest.raises(ValueError, match="width"):
        ImageRecord(sha256=sha("x"), uri="x", width=0, height=1)
    with pytest.raises(ValueError, match="transform"):
        ImageRecord(sha256=sha("x"), uri="x", width=1, height=1, transform=(1, 2, 3))
    with pytest.raises(ValueError, match="level"):
        ItemRecord(image_id=1, query="q", level="L4")
    with pytest.raises(ValueError, match="query"):
        ItemRecord(image_id=1, query="   ")
    with pytest.raises(ValueError, match="longer than 1000"):
        ItemRecord(image_id=1, query="x" * 1001)
    with pytest.raises(ValueError, match="dtype is longer"):
        ImageRecord(sha256=sha("x"), uri="x", width=1, height=1, dtype="complex-float-128-bits")
    with pytest.raises(ValueError, match="mask_sha256"):
        PredictionRecord(item_id=1, model_version=MV)
    with pytest.raises(ValueError, match="route"):
        PredictionRecord(item_id=1, model_version=MV, mask_sha256=sha("m"), route="sideways")
    with pytest.raises(ValueError, match="finite"):
        PredictionRecord(item_id=1, model_version=MV, mask_sha256=sha("m"), box=(0, 0, float("nan"), 1))
    with pytest.raises(ValueError, match="verdict"):
        AnnotationRecord(1, 1, "maybe", T0, T0)
    with pytest.raises(ValueError, match="needs a mask"):
        AnnotationRecord(1, 1, "accept", T0, T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        AnnotationRecord(1, 1, "reject", datetime(2026, 1, 1), T0)
    with pytest.raises(TypeError, match="ImageRecord"):
        repo.upsert_images(None, [{"sha256": sha("x")}])  # type: ignore[arg-type]


def _setup_items(session: Session, n: int = 4) -> list[int]:
    ids = repo.upsert_images(session, [image(i) for i in range(n)])
    item_ids = repo.upsert_items(session, [ItemRecord(image_id=v, query="solar panels", domain="Urban", level="L1")
                                           for v in ids.values()])  # fmt: skip
    session.commit()
    return sorted(item_ids.values())


def _prediction(item_id: int, blob_store, mv: str = MV, seed: int = 0) -> PredictionRecord:
    m = np.zeros((48, 64), bool)
    m[5 + seed : 20 + seed, 10:40] = True
    return PredictionRecord(
        item_id=item_id,
        model_version=mv,
        boxes=((10, 5, 40, 20),),
        box=(10, 5, 40, 20),
        refined_box=(4, 2.5, 43, 21.5),
        phrase="solar panels",
        keypoints=((25, 12), (30, 15)),
        route="intersection",
        valid_point=True,
        valid_text=True,
        mask_sha256=blob_store.put(encode_mask(m)),
        mask_area=int(m.sum()),
        score=0.5,
        timings={"ground": 0.01, "segment": 0.02},
        raw_text='{"bbox": [10, 5, 40, 20]}',
    )


def test_predictions_queries_and_retry(session: Session, blob_store):
    items = _setup_items(session)
    assert [i.id for i in repo.items_awaiting_prediction(session, MV)] == items
    assert repo.items_awaiting_prediction(session, MV, limit=2)[0].image.width == 64
    recs = [_prediction(items[0], blob_store), _prediction(items[1], blob_store, seed=3)]
    recs.append(PredictionRecord.failure(items[2], MV, RuntimeError("CUDA out of memory")))
    got = repo.upsert_predictions(session, recs)
    assert repo.upsert_predictions(session, recs) == got  # idempotent
    session.commit()
    assert repo.count_rows(session, Prediction) == 3
    st = {i.id: i.status for i in all_rows(session, Item)}
    assert st[items[0]] == st[items[1]] == ItemStatus.PREDICTED
    assert st[items[2]] == st[items[3]] == ItemStatus.NEW  # a failed prediction leaves the item new
    assert [i.id for i in repo.items_awaiting_prediction(session, MV)] == [items[3]]
    assert [i.id for i in repo.items_awaiting_prediction(session, MV, retry_failed=True)] == items[2:]
    failed = repo.prediction_for(session, items[2], MV)
    assert failed.failed and "CUDA out of memory" in failed.error
    # a retry that succeeds replaces the failed row (same id); a successful row is never overwritten
    fixed = add_prediction(session, _prediction(items[2], blob_store))
    assert fixed == failed.id
    again = add_prediction(session, PredictionRecord.failure(items[0], MV, "late failure"))
    assert again == got[(items[0], MV)]
    session.commit()
    session.expire_all()
    p0 = repo.prediction_for(session, items[0], MV)
    assert p0.error is None and p0.box == [10, 5, 40, 20] and p0.keypoints == [[25, 12], [30, 15]]
    assert p0.timings == {"ground": 0.01, "segment": 0.02}
    assert np.array_equal(decode_mask(blob_store.get(p0.mask_sha256), (48, 64)).sum(), p0.mask_area)
    assert repo.prediction_for(session, items[2], MV).error is None
    # a new model version: every item awaits prediction again
    assert len(repo.items_awaiting_prediction(session, "geoseg-paper-xyz")) == 4


def test_push_annotations_triplets_and_watermark(session: Session, blob_store):
    items = _setup_items(session, 3)
    preds = repo.upsert_predictions(session, [_prediction(i, blob_store) for i in items])
    project = repo.upsert_label_project(session, "http://127.0.0.1:8080/", 7, "GeoSeg verify")
    assert repo.upsert_label_project(session, "http://127.0.0.1:8080", 7) == project
    other = repo.upsert_label_project(session, "http://127.0.0.1:8080", 8)
    session.commit()
    awaiting = repo.predictions_awaiting_push(session, project, MV)
    assert [(i.id, p.id) for i, p in awaiting] == [(i, preds[(i, MV)]) for i in items]
    tasks = [LabelTaskRecord(project, i, 100 + k, preds[(i, MV)], 500 + k) for k, i in enumerate(items)]
    task_ids = repo.record_label_tasks(session, tasks[:2])
    assert repo.record_label_tasks(session, tasks[:2]) == task_ids  # idempotent
    session.commit()
    assert [i.id for i, _ in repo.predictions_awaiting_push(session, project, MV)] == [items[2]]
    assert len(repo.predictions_awaiting_push(session, other, MV)) == 3  # per project
    assert repo.item_status_counts(session) == {"in_review": 2, "predicted": 1}
    task = repo.label_task_by_ls_id(session, project, 101)
    assert task.item_id == items[1] and task.prediction.id == preds[(items[1], MV)]
    # a newer model version re-pushes to the same task
    newer = add_prediction(session, _prediction(items[0], blob_store, mv="geoseg-tiny-v2", seed=1))
    assert [i.id for i, _ in repo.predictions_awaiting_push(session, project, "geoseg-tiny-v2")] == [items[0]]
    repo.record_label_tasks(session, [LabelTaskRecord(project, items[0], 100, newer, 900)])
    session.commit()
    assert repo.predictions_awaiting_push(session, project, "geoseg-tiny-v2") == []
    assert repo.count_rows(session, LabelTask) == 2

    # annotations: accept item 0, reject item 1
    m = np.zeros((48, 64), bool)
    m[6:22, 11:41] = True
    mask_sha = blob_store.put(encode_mask(m))
    a1 = AnnotationRecord(9001, task_ids[items[0]], "accept", T0, T0, mask_sha, int(m.sum()), "ann@x", 12.5, 0.81)
    a2 = AnnotationRecord(9002, task_ids[items[1]], "reject", T0, T0 + timedelta(seconds=5), annotator="ann@x")
    before = None
    for _ in range(2):  # re-running the sync leaves the same rows
        ids = repo.upsert_annotations(session, [a1, a2])
        session.commit()
        after = snapshot_of(session)
        assert before is None or after == before
        before = after
    assert set(ids) == {9001, 9002}
    status = {i.id: i.status for i in all_rows(session, Item)}
    assert status[items[0]] == ItemStatus.ACCEPTED and status[items[1]] == ItemStatus.REJECTED
    trip = repo.accepted_triplets(session)
    assert len(trip) == 1 and trip[0].item_id == items[0] and trip[0].mask_sha256 == mask_sha
    assert trip[0].domain == "Urban" and trip[0].level == "L1" and trip[0].image.width == 64
    assert (
        repo.accepted_triplets(session, domain="Rural") == [] and len(repo.accepted_triplets(session, level="L1")) == 1
    )

    # watermark: annotations since, and it only moves forward
    assert [a.ls_annotation_id for a in repo.annotations_since(session, project)] == [9001, 9002]
    assert [a.ls_annotation_id for a in repo.annotations_since(session, project, T0)] == [9002]
    assert repo.annotations_since(session, other) == []
    assert repo.get_watermark(session, project) is None
    assert repo.advance_watermark(session, project, T0 + timedelta(seconds=5)) == T0 + timedelta(seconds=5)
    assert repo.advance_watermark(session, project, T0) == T0 + timedelta(seconds=5)
    session.commit()
    assert repo.get_watermark(session, project) == T0 + timedelta(seconds=5)

    # an older copy of an annotation does not overwrite a newer one; a newer edit changes the verdict
    stale = AnnotationRecord(9002, task_ids[items[1]], "no_target", T0, T0 - timedelta(hours=1))
    add_annotation(session, stale)
    session.commit()
    assert repo.set_item_status(session, items[1], ItemStatus.REJECTED).status == ItemStatus.REJECTED
    edit = AnnotationRecord(9002, task_ids[items[1]], "accept", T0, T0 + timedelta(minutes=1), mask_sha, int(m.sum()))
    add_annotation(session, edit)
    session.commit()
    assert {t.item_id for t in repo.accepted_triplets(session)} == {items[0], items[1]}

    # a second annotator rejects item 0 later: the newest annotation decides, the triplet is withdrawn
    a3 = AnnotationRecord(9003, task_ids[items[0]], "reject", T0, T0 + timedelta(minutes=2))
    add_annotation(session, a3)
    session.commit()
    assert session.get(Item, items[0]).status == ItemStatus.REJECTED
    assert {t.item_id for t in repo.accepted_triplets(session)} == {items[1]}
    assert len(repo.accepted_triplets(session, include_withdrawn=True)) == 2
    # ... and deleting that rejection in Label Studio restores the acceptance (and its triplet)
    assert repo.retract_annotations(session, [9003]) == 1
    assert repo.retract_annotations(session, [9003]) == 0
    session.commit()
    assert session.get(Item, items[0]).status == ItemStatus.ACCEPTED
    assert {t.item_id for t in repo.accepted_triplets(session)} == {items[0], items[1]}
    # deleting every annotation sends the item back to review
    repo.retract_annotations(session, [9001])
    session.commit()
    assert session.get(Item, items[0]).status == ItemStatus.IN_REVIEW
    assert {t.item_id for t in repo.accepted_triplets(session)} == {items[1]}
    assert repo.count_rows(session, Triplet) == 2  # withdrawn, never deleted (snapshots may refer to it)

    with pytest.raises(IllegalTransitionError):
        repo.set_item_status(session, items[0], ItemStatus.NEW)
    with pytest.raises(LookupError, match="unknown label tasks"):
        add_annotation(session, AnnotationRecord(1, 99999, "reject", T0, T0))
    session.rollback()


def test_snapshots_are_immutable(session: Session, blob_store):
    items = _setup_items(session, 3)
    project = repo.upsert_label_project(session, "http://ls", 1)
    task_ids = repo.record_label_tasks(session, [LabelTaskRecord(project, i, 10 + i) for i in items])
    m = np.ones((48, 64), bool)
    msha = blob_store.put(encode_mask(m))
    repo.upsert_annotations(
        session, [AnnotationRecord(700 + k, task_ids[i], "accept", T0, T0, msha) for k, i in enumerate(items)]
    )
    session.commit()
    trips = repo.accepted_triplets(session)
    assert len(trips) == 3
    members = [(trips[0].id, "test"), (trips[1].id, "train")]
    snap = repo.create_snapshot(session, "geoseg-bench", "1", members, description="first")
    session.commit()
    assert repo.create_snapshot(session, "geoseg-bench", "1", list(reversed(members))).id == snap.id
    with pytest.raises(repo.SnapshotConflictError, match="immutable"):
        repo.create_snapshot(session, "geoseg-bench", "1", [*members, (trips[2].id, "test")])
    session.rollback()
    manifest = repo.snapshot_manifest(repo.get_snapshot(session, "geoseg-bench", "1"))
    assert [m["triplet_id"] for m in manifest["members"]] == sorted(t for t, _ in members)
    assert manifest["manifest_sha256"] == repo.manifest_sha256(manifest["members"])
    assert all(m["mask_sha256"] == msha for m in manifest["members"])
    # retracting a member's annotation withdraws the triplet but the snapshot still lists it
    repo.retract_annotations(session, [700])
    session.commit()
    assert len(repo.accepted_triplets(session)) == 2
    assert {t.id for t in repo.accepted_triplets(session, snapshot=("geoseg-bench", "1"))} == {t for t, _ in members}
    with pytest.raises(ValueError, match="withdrawn"):
        repo.create_snapshot(session, "geoseg-bench", "2", members)
    with pytest.raises(LookupError, match="unknown triplets"):
        repo.create_snapshot(session, "geoseg-bench", "2", [(99999, "test")])
    with pytest.raises(LookupError, match="no snapshot"):
        repo.accepted_triplets(session, snapshot=("nope", "1"))
    session.rollback()
    assert repo.count_rows(session, Snapshot) == 1 and repo.count_rows(session, SnapshotMember) == 2


def test_bulk_triplet_import(session: Session, blob_store):
    items = _setup_items(session, 2)
    project = repo.upsert_label_project(session, "http://ls", 1)
    task_ids = repo.record_label_tasks(session, [LabelTaskRecord(project, i, 10 + i) for i in items])
    ann = repo.upsert_annotations(session, [AnnotationRecord(50 + i, task_ids[i], "reject", T0, T0) for i in items])
    item_rows = {i.id: i for i in all_rows(session, Item)}
    recs = [
        TripletRecord(ann[50 + i], i, item_rows[i].image_id, "solar panels", sha(f"m{i}"), "Urban", "L1") for i in items
    ]
    out = repo.upsert_triplets(session, recs)
    assert repo.upsert_triplets(session, recs) == out and len(out) == 2
    session.commit()
    assert repo.count_rows(session, Triplet) == 2


# --- concurrency (PostgreSQL: real parallel transactions) -----------------------------------------------------------


def _race(url: str, fn, n: int = 4) -> list:
    """Run ``fn(session)`` in ``n`` threads, each with its own engine and transaction, released together."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def worker(k: int) -> None:
        eng = make_engine(url, poolclass=sa.pool.NullPool)
        try:
            with session_scope(eng) as s:
                s.execute(sa.text("SELECT 1"))  # connect first, so the race is on the statement
                barrier.wait(timeout=30)
                results[k] = fn(s)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


@pytest.mark.postgres
def test_concurrent_writers_end_with_one_row(pg_schema_url):
    from storage.db import create_all

    eng = make_engine(pg_schema_url)
    create_all(eng)
    try:
        rec = image(42)
        ids = _race(pg_schema_url, lambda s: add_image(s, rec))
        assert len(set(ids)) == 1
        item = _race(pg_schema_url, lambda s: add_item(s, ItemRecord(ids[0], "a bridge")))
        assert len(set(item)) == 1
        with session_scope(eng) as s:
            project = repo.upsert_label_project(s, "http://ls", 3)
            task = repo.record_label_tasks(s, [LabelTaskRecord(project, item[0], 77)])[item[0]]
        msha = sha("mask")
        ann = AnnotationRecord(123456, task, "accept", T0, T0, msha, 10, "a")
        got = _race(pg_schema_url, lambda s: add_annotation(s, ann))
        assert len(set(got)) == 1
        with session_scope(eng) as s:
            assert repo.count_rows(s, Image) == 1 and repo.count_rows(s, Item) == 1
            assert repo.count_rows(s, Annotation) == 1 and repo.count_rows(s, Triplet) == 1
            assert s.get(Item, item[0]).status == ItemStatus.ACCEPTED
    finally:
        eng.dispose()


def test_concurrent_writers_sqlite(tmp_path):
    """SQLite serialises writers (busy timeout): two racing registrations still end with one row."""
    from storage.db import create_all

    url = f"sqlite:///{tmp_path / 'race.db'}"
    eng = make_engine(url)
    create_all(eng)
    rec = image(1)
    ids = _race(url, lambda s: add_image(s, rec), n=3)
    assert len(set(ids)) == 1
    with session_scope(eng) as s:
        assert repo.count_rows(s, Image) == 1
    eng.dispose()


def test_records_from_real_geoseg_objects(session: Session, blob_store):
    """The adapters at the edge: a real GeoTIFF read by geoseg.imagery and a GeoSegResult built from a mask."""
    from pathlib import Path

    from geoseg.imagery import read_image
    from geoseg.types import Box, GeoSegResult, Grounding

    path = Path(__file__).resolve().parents[1] / "data" / "aerial" / "lc.tif"
    data = path.read_bytes()
    loaded = read_image(data, name=path.name)
    rec = ImageRecord.from_loaded(loaded, sha256=hashlib.sha256(data).hexdigest(), uri=path.as_uri(), source="test")
    image_id = add_image(session, rec)
    stored = session.get(Image, image_id)
    assert (stored.width, stored.height, stored.bands) == (loaded.width, loaded.height, loaded.bands)
    assert stored.crs == loaded.crs and (stored.transform is None) == (loaded.transform is None)
    if loaded.transform is not None:
        assert stored.transform == pytest.approx(list(loaded.transform))
    item_id = add_item(session, ItemRecord(image_id, "the lake"))
    mask = np.zeros((loaded.height, loaded.width), bool)
    mask[2:10, 3:12] = True
    g = Grounding(boxes=(Box(3, 2, 12, 10),), phrase="lake", points=(((6.0, 5.0),),), raw_text='{"bbox": [3,2,12,10]}')
    result = GeoSegResult(
        mask=mask, route="point", grounding=g, model_version="geoseg-tiny-test", box=g.box,
        refined_box=Box(1.2, 0.4, 12.9, 10.8), roi=(1, 0, 13, 11), keypoints=np.array([[6.0, 5.0]]),
        valid_point=True, valid_text=False, timings={"ground": 0.5},
    )  # fmt: skip
    msha = blob_store.put(encode_mask(result.mask))
    pid = add_prediction(session, PredictionRecord.from_result(item_id, result, msha, score=0.9))
    session.commit()
    p = session.get(Prediction, pid)
    assert p.route == "point" and p.phrase == "lake" and p.mask_area == int(mask.sum())
    assert p.boxes == [[3, 2, 12, 10]] and p.refined_box == pytest.approx([1.2, 0.4, 12.9, 10.8])
    assert p.valid_point is True and p.valid_text is False and p.keypoints == [[6.0, 5.0]]
    assert np.array_equal(decode_mask(blob_store.get(p.mask_sha256), mask.shape), mask)
    assert session.get(Item, item_id).status == ItemStatus.PREDICTED
