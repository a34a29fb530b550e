"""Label Studio integration against a REAL server (started once per session by tests/fixtures/labelstudio.py).

Masks here are synthetic (blobs and noise), so every pixel comparison is exact and meaningful for the codec and the
transport; no model output is involved.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image as PILImage

from labeling.brush import rle_to_mask
from labeling.client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioUnavailableError,
)
from labeling.project import ensure_project
from labeling.push import ImageUrlError, ImageUrlResolver, brush_result, push_predictions
from labeling.sync import apply_webhook_event, sync_annotations
from labeling.webhook import SECRET_HEADER, make_webhook_app, register_webhook
from storage import repo
from storage.maskcodec import decode_mask, encode_mask
from storage.models import Annotation, Item, ItemStatus, LabelProject, LabelTask, Triplet
from storage.records import ImageRecord, ItemRecord, PredictionRecord
from tests.fixtures.storage import add_image, add_item, add_prediction
from tests.helpers.labelstudio import MV
from tests.helpers.labelstudio import blob as _blob
from tests.helpers.labelstudio import pushed as _pushed
from tests.helpers.labelstudio import resolver as _resolver
from tests.helpers.labelstudio import seed as _seed
from tests.helpers.labelstudio import verdict as _verdict

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
# --- server and client ----------------------------------------------------------------------------------------------


def test_server_status_token_and_files(labelstudio_server):
    st = labelstudio_server.server.status()
    assert st.running and st.token_ok and st.version and st.version.startswith("1.23")
    text = "\n".join(st.lines())
    assert "LABEL_STUDIO_USER_TOKEN" in text and labelstudio_server.token not in text
    creds = labelstudio_server.server.credentials_file
    assert creds.stat().st_mode & 0o777 == 0o600
    assert labelstudio_server.token not in repr(labelstudio_server.client)
    assert labelstudio_server.client.version().startswith("1.23")
    # starting again finds the running server instead of starting a second one
    assert labelstudio_server.server.start().pid == st.pid


def test_server_lifecycle_start_stop_restart(labelstudio_server, tmp_path):
    """A second server from the same template: clean stop (process group gone, state removed), warm restart."""
    import os
    import shutil

    from labeling.server import LabelStudioServer, pid_alive
    from tests.fixtures.labelstudio import template_dir

    root = tmp_path / "labelstudio"
    shutil.copytree(template_dir(labelstudio_server.server.venv), root)
    imagery = tmp_path / "imagery"
    imagery.mkdir()
    srv = LabelStudioServer(root, imagery_root=imagery)
    assert not srv.status().running
    st = srv.start()
    try:
        assert st.running and st.token_ok and st.url != labelstudio_server.url
        assert os.getpgid(st.pid) == st.pid  # its own process group
        assert srv.stop() is True
        assert not pid_alive(st.pid) and not srv.state_file.exists()
        assert not srv.status().running and srv.stop() is False
        st2 = srv.start()  # warm restart on the same data: the same token still works
        assert st2.running and st2.token_ok and st2.pid != st.pid
    finally:
        srv.stop()


def test_wrong_token_names_the_variable(labelstudio_server):
    bad = LabelStudioClient(labelstudio_server.url, "0" * 40, token_env="MY_LS_TOKEN", retries=1)
    with pytest.raises(LabelStudioAuthError, match="MY_LS_TOKEN") as err:
        bad.whoami()
    assert "0" * 40 not in str(err.value)
    with pytest.raises(LabelStudioAuthError, match="MY_LS_TOKEN"):
        LabelStudioClient(labelstudio_server.url, None, token_env="MY_LS_TOKEN")


def test_server_down_bounded_retries_then_error_names_url():
    from labeling.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    c = LabelStudioClient(url, "x" * 40, retries=3, backoff=0.01)
    t = time.perf_counter()
    with pytest.raises(LabelStudioUnavailableError, match=url.replace(".", r"\.")):
        c.version()
    assert c.requests_made == 3 and time.perf_counter() - t < 10


def test_5xx_retried_then_success_and_persistent_5xx_fails():
    # Label Studio cannot be made to answer 5xx on demand: a transport stands in for that fault only.
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(503, json={"detail": "busy"})
        return httpx.Response(200, json={"release": "1.23.2"})

    c = LabelStudioClient("http://ls.invalid", "t" * 40, retries=4, backoff=0.01, transport=httpx.MockTransport(flaky))
    assert c.version() == "1.23.2" and calls["n"] == 3
    always = LabelStudioClient(
        "http://ls.invalid", "t" * 40, retries=2, backoff=0.01,
        transport=httpx.MockTransport(lambda r: httpx.Response(502, text="bad gateway")),
    )  # fmt: skip
    with pytest.raises(LabelStudioUnavailableError, match=r"http://ls\.invalid.*HTTP 502"):
        always.version()


# --- project --------------------------------------------------------------------------------------------------------


def test_project_setup_is_idempotent(ls_project):
    p = ls_project
    again = ensure_project(p.ls.client, p.session, p.handle.title, imagery_root=p.ls.imagery_root)
    p.session.commit()
    assert again.ls_project_id == p.handle.ls_project_id and not again.created and p.handle.created
    assert again.label_project_id == p.handle.label_project_id
    assert p.session.scalar(sa.select(sa.func.count()).select_from(LabelProject)) == 1
    same_title = [x for x in p.ls.client.projects(title=p.handle.title) if x["title"] == p.handle.title]
    assert len(same_title) == 1
    cfg = p.ls.client.get_project(p.handle.ls_project_id)["label_config"]
    for tag in ('BrushLabels name="mask"', 'Choices name="verdict"', 'value="no target"', 'Text name="query"'):
        assert tag in cfg
    # a fresh database finds the same Label Studio project by title instead of creating a second one
    from sqlalchemy.orm import Session

    from storage.db import create_all, make_engine

    eng = make_engine("sqlite://")
    create_all(eng)
    with Session(eng) as s2:
        h2 = ensure_project(p.ls.client, s2, p.handle.title)
        assert h2.ls_project_id == p.handle.ls_project_id and not h2.created


def test_image_url_resolver(tmp_path):
    r = ImageUrlResolver(tmp_path / "imgs")
    (tmp_path / "imgs" / "a b").mkdir(parents=True)
    rel = (tmp_path / "imgs").resolve().relative_to("/").as_posix()  # the default document root: "/"
    assert r(str(tmp_path / "imgs" / "a b" / "x.png")) == f"/data/local-files/?d={rel}/a%20b/x.png"
    r2 = ImageUrlResolver(tmp_path / "imgs", document_root=tmp_path)  # a server's own LOCAL_FILES_DOCUMENT_ROOT
    assert r2(str(tmp_path / "imgs" / "x.png")) == "/data/local-files/?d=imgs/x.png"
    with pytest.raises(ImageUrlError, match="outside"):
        r(str(tmp_path / "other.png"))
    assert r("https://example.org/x.png") == "https://example.org/x.png"
    with pytest.raises(ImageUrlError, match="outside"):
        r("/etc/passwd")
    assert r("s3://bucket/key.png") == "s3://bucket/key.png"  # a storage URI: presigned by Label Studio on view
    assert r.needs.buckets == {"bucket"} and r.needs.local_roots == {(tmp_path / "imgs").resolve()}
    with pytest.raises(ImageUrlError, match="S3 client"):
        ImageUrlResolver(tmp_path / "imgs", s3_mode="presign")("s3://bucket/key.png")


# --- push -----------------------------------------------------------------------------------------------------------


def test_bulk_push_with_predictions_and_round_trip(ls_project):
    p = ls_project
    ids = _seed(p, 30, noisy=False)
    report = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=12)
    assert report.pushed == 30 and not report.failed
    assert report.requests <= 1 + 3  # one listing for reconciliation + ceil(30 / 12) imports
    tasks = {t["data"]["item_id"]: t for t in p.ls.client.iter_tasks(p.handle.ls_project_id, fields="all")}
    assert sorted(tasks) == sorted(ids)
    lts = {lt.item_id: lt for lt in repo.label_tasks(p.session, p.handle.label_project_id)}
    for iid in ids:
        task = tasks[iid]
        assert lts[iid].ls_task_id == task["id"]
        assert task["data"]["image"].startswith("/data/local-files/?d=")
        (pred,) = task["predictions"]
        assert pred["model_version"] == MV and pred["score"] == 0.5
        # GeoSeg mask -> brush RLE -> Label Studio -> back: identical pixels
        stored = decode_mask(p.blobs.get(lts[iid].prediction.mask_sha256))
        region = pred["result"][0]
        back = rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"])
        np.testing.assert_array_equal(back, stored)
    assert all(p.session.get(Item, i).status == ItemStatus.IN_REVIEW for i in ids)
    # the local-files URL is served by Label Studio
    r = httpx.get(p.ls.url + tasks[ids[0]]["data"]["image"], headers={"Authorization": f"Token {p.ls.token}"})
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    # idempotent: nothing left to push
    again = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert again.pushed == 0 and again.reconciled == 0
    assert len(list(p.ls.client.iter_tasks(p.handle.ls_project_id))) == 30
    paged = [t["id"] for t in p.ls.client.iter_tasks(p.handle.ls_project_id, page_size=7)]  # 5 pages
    assert sorted(paged) == sorted(t["id"] for t in tasks.values()) and len(set(paged)) == 30


def test_push_reconciles_after_crash_between_import_and_db_write(ls_project, monkeypatch):
    p = ls_project
    ids = _seed(p, 8)
    import storage.repo as repo_mod

    real = repo_mod.record_label_tasks
    state = {"calls": 0}

    def crash(session, records):
        state["calls"] += 1
        if state["calls"] == 1 and records:
            raise RuntimeError("simulated crash after the import request")
        return real(session, records)

    monkeypatch.setattr(repo_mod, "record_label_tasks", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=5)
    p.session.rollback()
    monkeypatch.setattr(repo_mod, "record_label_tasks", real)
    assert len(list(p.ls.client.iter_tasks(p.handle.ls_project_id))) == 5  # first batch reached Label Studio
    report = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=5)
    assert report.reconciled == 5 and report.pushed == 3
    tasks = list(p.ls.client.iter_tasks(p.handle.ls_project_id))
    assert sorted(t["data"]["item_id"] for t in tasks) == sorted(ids)  # no duplicates
    assert len(repo.label_tasks(p.session, p.handle.label_project_id)) == 8


class _LostResponse(httpx.BaseTransport):
    """Forwards to the real server, then loses the answer of the first import (a timeout after Label Studio acted):
    a fault the real server cannot be made to produce, so only this is simulated."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path.endswith("/import") and not self.lost:
            resp.read()
            self.lost += 1
            raise httpx.ReadTimeout("simulated: the import answer was lost", request=request)
        return resp


def test_push_unknown_import_outcome_is_reconciled_not_duplicated(ls_project):
    p = ls_project
    ids = _seed(p, 6)
    transport = _LostResponse()
    client = LabelStudioClient(p.ls.url, p.ls.token, retries=3, backoff=0.01, transport=transport)
    report = push_predictions(client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=4)
    assert transport.lost == 1
    assert report.reconciled == 4 and report.pushed == 2 and not report.failed
    tasks = list(p.ls.client.iter_tasks(p.handle.ls_project_id))
    assert sorted(t["data"]["item_id"] for t in tasks) == sorted(ids)  # no duplicates
    lts = {lt.item_id: lt.ls_task_id for lt in repo.label_tasks(p.session, p.handle.label_project_id)}
    assert lts == {t["data"]["item_id"]: t["id"] for t in tasks}


def test_push_records_bad_items_and_goes_on(ls_project):
    import tempfile

    p = ls_project
    ids = _seed(p, 3)
    outside = Path(tempfile.mkdtemp(prefix="geolabel-outside-")) / "elsewhere.png"
    PILImage.fromarray(np.zeros((48, 64, 3), np.uint8)).save(outside)
    image_id = add_image(p.session, ImageRecord(sha256="e" * 64, uri=str(outside), width=64, height=48))
    bad_item = add_item(p.session, ItemRecord(image_id=image_id, query="outside the root"))
    empty = p.blobs.put(encode_mask(np.zeros((48, 64), bool)))
    add_prediction(
        p.session, PredictionRecord(item_id=bad_item, model_version=MV, route="empty", mask_sha256=empty)
    )
    p.session.commit()
    report = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert report.pushed == 3 and [i for i, _ in report.failed] == [bad_item]
    assert "outside" in report.failed[0][1]
    assert sorted(t["data"]["item_id"] for t in p.ls.client.iter_tasks(p.handle.ls_project_id)) == sorted(ids)


# --- annotations: accept, correct, no target, reject, delete; sync by poll -----------------------------------------


def test_annotations_sync_by_poll(ls_project):
    p = ls_project
    c = p.ls.client
    ids, lts = _pushed(p, 5)
    h, w = 48, 64
    t_accept, t_correct, t_empty, t_reject, t_bad = (lts[i].ls_task_id for i in ids)
    pre = {i: decode_mask(p.blobs.get(lts[i].prediction.mask_sha256)) for i in ids}
    # accept the pre-label as is (the annotator submits the prediction's region)
    pred_result = c.get_task(t_accept)["predictions"][0]["result"]
    a1 = c.create_annotation(t_accept, [*pred_result, _verdict("accept")], lead_time=7.5)
    # correct the mask, then accept
    corrected = _blob(h, w, 10, 10, 6)
    a2 = c.create_annotation(t_correct, [*brush_result(corrected), _verdict("accept")], lead_time=20)
    # no target (the drawn stroke is ignored: a verified empty mask)
    a3 = c.create_annotation(t_empty, [_verdict("no target")])
    a4 = c.create_annotation(t_reject, [_verdict("reject")])
    # malformed: a brush region for a different image size
    a5 = c.create_annotation(t_bad, [*brush_result(np.ones((10, 10), bool)), _verdict("accept")])

    rep = sync_annotations(c, p.session, p.blobs, p.handle)
    assert rep.upserted == 4 and rep.watermark is not None
    assert [aid for aid, _ in rep.malformed] == [a5["id"]] and "10x10" in rep.malformed[0][1]
    s = p.session
    s.expire_all()
    ann = {a.ls_annotation_id: a for a in s.scalars(sa.select(Annotation))}
    assert ann[a1["id"]].verdict == "accept" and ann[a1["id"]].iou_vs_prelabel == 1.0
    assert ann[a1["id"]].lead_time == 7.5 and ann[a1["id"]].annotator
    np.testing.assert_array_equal(decode_mask(p.blobs.get(ann[a1["id"]].mask_sha256)), pre[ids[0]])
    got2 = decode_mask(p.blobs.get(ann[a2["id"]].mask_sha256))
    np.testing.assert_array_equal(got2, corrected)
    expect_iou = (corrected & pre[ids[1]]).sum() / (corrected | pre[ids[1]]).sum()
    assert ann[a2["id"]].iou_vs_prelabel == pytest.approx(expect_iou)
    assert ann[a3["id"]].verdict == "no_target" and ann[a3["id"]].mask_area == 0
    assert not decode_mask(p.blobs.get(ann[a3["id"]].mask_sha256)).any()
    assert ann[a4["id"]].verdict == "reject"
    status = {i: s.get(Item, i).status for i in ids}
    assert status == {
        ids[0]: ItemStatus.ACCEPTED, ids[1]: ItemStatus.ACCEPTED, ids[2]: ItemStatus.NO_TARGET,
        ids[3]: ItemStatus.REJECTED, ids[4]: ItemStatus.IN_REVIEW,
    }  # fmt: skip
    trip = {t.item_id: t for t in s.scalars(sa.select(Triplet))}
    assert set(trip) == {ids[0], ids[1]} and trip[ids[1]].mask_sha256 == ann[a2["id"]].mask_sha256

    # nothing changed -> the next poll reads nothing new (watermark) and stores nothing
    rep2 = sync_annotations(c, p.session, p.blobs, p.handle, overlap=timedelta(0))
    assert rep2.upserted == 0 and rep2.tasks_seen == 0
    rep2b = sync_annotations(c, p.session, p.blobs, p.handle)  # the default 2 s overlap re-reads, harmlessly
    assert rep2b.retracted == 0 and p.session.scalar(sa.select(sa.func.count()).select_from(Annotation)) == 4
    assert rep2b.upserted == 0 and rep2b.unchanged == rep2b.tasks_seen - len(rep2b.malformed)  # re-read, not re-stored
    rep_full = sync_annotations(c, p.session, p.blobs, p.handle, full=True)  # a full sync stores and re-decides all
    assert rep_full.upserted == 4 and rep_full.unchanged == 0

    # update: the corrected annotation becomes a reject; delete: the accepted one goes away
    time.sleep(1.1)
    c.update_annotation(a2["id"], [_verdict("reject")])
    c.delete_annotation(a1["id"])
    rep3 = sync_annotations(c, p.session, p.blobs, p.handle)
    assert rep3.retracted == 1 and rep3.upserted >= 1
    s.expire_all()
    assert s.get(Item, ids[0]).status == ItemStatus.IN_REVIEW and s.get(Item, ids[1]).status == ItemStatus.REJECTED
    live = {t.item_id for t in s.scalars(sa.select(Triplet).where(Triplet.withdrawn.is_(False)))}
    assert live == set()
    assert s.scalar(sa.select(Annotation.retracted).where(Annotation.ls_annotation_id == a1["id"]))


def test_noisy_1024_mask_round_trip_through_label_studio(ls_project):
    p = ls_project
    c = p.ls.client
    ids, lts = _pushed(p, 1, h=1024, w=1024, noisy=True, tag="rt")
    lt = lts[ids[0]]
    mask = decode_mask(p.blobs.get(lt.prediction.mask_sha256))
    region = c.get_task(lt.ls_task_id)["predictions"][0]["result"][0]
    np.testing.assert_array_equal(rle_to_mask(region["value"]["rle"], 1024, 1024), mask)
    ann = c.create_annotation(lt.ls_task_id, [region, _verdict("accept")])
    sync_annotations(c, p.session, p.blobs, p.handle)
    p.session.expire_all()
    row = p.session.scalar(sa.select(Annotation).where(Annotation.ls_annotation_id == ann["id"]))
    np.testing.assert_array_equal(decode_mask(p.blobs.get(row.mask_sha256)), mask)
    assert row.iou_vs_prelabel == 1.0


# --- webhook --------------------------------------------------------------------------------------------------------


class _Receiver:
    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def test_webhook_sync_with_real_label_studio_calls(ls_project):
    from labeling.server import free_port

    p = ls_project
    c = p.ls.client
    ids, lts = _pushed(p, 2)
    secret = "s3cret-for-tests-" + "x" * 16
    port = free_port()
    app = make_webhook_app(p.engine, p.blobs, p.handle, secret)
    url = f"http://127.0.0.1:{port}/webhook"
    with _Receiver(app, port):
        # unsigned, wrong-secret and oversized calls are rejected and change nothing
        body = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": {"id": p.handle.ls_project_id}}
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={SECRET_HEADER: "wrong" * 8}).status_code == 401
        small = make_webhook_app(p.engine, p.blobs, p.handle, secret, max_body=1000)
        port2 = free_port()
        with _Receiver(small, port2):
            r = httpx.post(f"http://127.0.0.1:{port2}/webhook", content=b"x" * 5000, headers={SECRET_HEADER: secret})
            assert r.status_code == 413
        assert httpx.post(url, content=b"[not json", headers={SECRET_HEADER: secret}).status_code == 400
        assert app.events == 0

        register_webhook(c, p.handle, url, secret)
        register_webhook(c, p.handle, url, secret)  # idempotent
        assert len([h for h in c.webhooks(p.handle.ls_project_id) if h["url"] == url]) == 1

        t0, t1 = lts[ids[0]].ls_task_id, lts[ids[1]].ls_task_id
        corrected = _blob(48, 64, 20, 30, 9)
        a = c.create_annotation(t0, [*brush_result(corrected), _verdict("accept")])
        b = c.create_annotation(t1, [_verdict("no target")])

        def stored(aid):
            with p.engine.connect() as conn:
                return conn.execute(
                    sa.select(Annotation.verdict, Annotation.retracted).where(Annotation.ls_annotation_id == aid)
                ).first()

        assert _wait(lambda: stored(a["id"]) is not None and stored(b["id"]) is not None)
        assert stored(a["id"]).verdict == "accept" and stored(b["id"]).verdict == "no_target"
        c.update_annotation(a["id"], [_verdict("reject")])
        assert _wait(lambda: stored(a["id"]).verdict == "reject")
        c.delete_annotation(b["id"])
        assert _wait(lambda: stored(b["id"]).retracted)
    p.session.expire_all()
    assert p.session.get(Item, ids[0]).status == ItemStatus.REJECTED
    assert p.session.get(Item, ids[1]).status == ItemStatus.IN_REVIEW


def test_webhook_event_malformed_and_foreign_project(ls_project):
    p = ls_project
    ids, lts = _pushed(p, 1)
    lt = lts[ids[0]]
    now = "2026-01-01T00:00:00Z"
    bad = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": p.handle.ls_project_id},
        "task": {"id": lt.ls_task_id, "data": {"item_id": ids[0]}},
        "annotation": {"id": 999999, "result": [_verdict("maybe")], "created_at": now, "updated_at": now},
    }
    rep = apply_webhook_event(p.session, p.blobs, p.handle, bad)
    assert rep.upserted == 0 and rep.malformed and "maybe" in rep.malformed[0][1]
    foreign = dict(bad, project={"id": p.handle.ls_project_id + 1000})
    assert apply_webhook_event(p.session, p.blobs, p.handle, foreign).skipped_tasks


def test_label_task_count_matches(ls_project):
    """LabelTask rows are unique per (project, item) even when pushing twice in a row."""
    p = ls_project
    _pushed(p, 3)
    push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert p.session.scalar(sa.select(sa.func.count()).select_from(LabelTask)) == 3


def test_path_helpers_do_not_leak_token(labelstudio_server, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    labelstudio_server.client.whoami()
    assert labelstudio_server.token not in caplog.text
    assert isinstance(Path(labelstudio_server.server.log_file), Path)


# --- S3 images: presigned URLs against a real moto_server ------------------------------------------------------------


def test_push_s3_images_as_storage_uris(ls_project, s3_client, s3_bucket, moto_server, monkeypatch):
    import base64
    import io

    from labeling.storages import S3Connection
    from tests.fixtures.storage import MOTO_CREDENTIALS

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MOTO_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MOTO_CREDENTIALS["aws_secret_access_key"])
    p = ls_project
    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    s3_client.put_object(Bucket=s3_bucket, Key="scenes/a.png", Body=buf.getvalue())
    uri = f"s3://{s3_bucket}/scenes/a.png"
    image_id = add_image(p.session, ImageRecord(sha256="a" * 64, uri=uri, width=64, height=48))
    item_id = add_item(p.session, ItemRecord(image_id=image_id, query="the roof"))
    mask = _blob(48, 64, 24, 32, 10)
    add_prediction(
        p.session,
        PredictionRecord(item_id=item_id, model_version=MV, mask_sha256=p.blobs.put(encode_mask(mask)), score=0.9),
    )
    p.session.commit()
    resolver = ImageUrlResolver.for_server(p.ls.server)
    assert resolver(uri) == uri
    resolver.needs.ensure(p.ls.client, p.handle.ls_project_id, S3Connection(endpoint_url=moto_server))
    rep = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=resolver)
    assert rep.pushed == 1
    (task,) = list(p.ls.client.iter_tasks(p.handle.ls_project_id))
    shown = task["data"]["image"]  # the view-time form: the task's resolve endpoint, no fixed link
    assert shown == f"/tasks/{task['id']}/resolve/?fileuri=" + base64.urlsafe_b64encode(uri.encode()).decode()
    got = httpx.get(p.ls.url + shown, headers={"Authorization": f"Token {p.ls.token}"}, follow_redirects=True)
    assert got.status_code == 200 and got.content == buf.getvalue()  # what the annotator's browser will load


# --- CLI ------------------------------------------------------------------------------------------------------------


def test_cli_status_names_token_variable_only(labelstudio_server, monkeypatch, capsys):
    from flows.cli import main

    root = labelstudio_server.server.root
    assert root.name == "labelstudio"
    monkeypatch.delenv("GEOLABEL_DATA_DIR", raising=False)
    monkeypatch.setenv("GEOLABEL_IMAGERY_ROOTS", str(labelstudio_server.imagery_root))
    try:
        main(["labelstudio", "status", "--data-dir", str(root.parent)])
    except SystemExit as ex:
        assert ex.code in (0, None)
    out = capsys.readouterr().out
    assert "1.23" in out and labelstudio_server.url in out and "LABEL_STUDIO_USER_TOKEN" in out
    assert labelstudio_server.token not in out


def test_cli_webhook_command_serves_and_registers(labelstudio_server, tmp_path):
    import os
    import subprocess
    import sys

    from labeling.server import free_port
    from storage.db import create_all, make_engine

    data = tmp_path / "data"
    data.mkdir()
    db_url = f"sqlite:///{(data / 'geolabel.db').as_posix()}"
    eng = make_engine(db_url)
    create_all(eng)
    eng.dispose()
    port = free_port()
    secret = "cli-secret-" + "z" * 20
    env = {
        **os.environ,
        "GEOLABEL_DATA_DIR": str(data),
        "GEOLABEL_DATABASE_URL": db_url,
        "GEOLABEL_LABEL_STUDIO_URL": labelstudio_server.url,
        "LABEL_STUDIO_USER_TOKEN": labelstudio_server.token,
        "GEOLABEL_WEBHOOK_SECRET": secret,
    }
    title = "cli webhook project"
    cmd = [sys.executable, "-m", "flows.cli", "labelstudio", "webhook", "--project", title, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert _wait(lambda: _ok(url + "/health"), timeout=60), "webhook receiver did not come up"
        assert httpx.post(url + "/webhook", json={"action": "x"}).status_code == 401
        (proj,) = [x for x in labelstudio_server.client.projects(title=title) if x["title"] == title]
        hooks = labelstudio_server.client.webhooks(proj["id"])
        assert [h["url"] for h in hooks] == [url + "/webhook"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert secret not in out and labelstudio_server.token not in out


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
