"""The GeoSeg ML backend (tiny models, real loading path) connected to a real Label Studio through its ``/api/ml`` API;
pre-labels requested through Label Studio's API: interactive annotating (a new query) and "Retrieve predictions".

Tiny-model masks are meaningless: the tests check the protocol, model_version, the warning and the stored
prediction, never the mask content.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.ml_backend import rect_model as _rect_model
from tests.helpers.ml_backend import serve

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
pytestmark = pytest.mark.labelstudio


@pytest.fixture
def review_task(ls_project):
    """A review task (image below the local-files root + query) in a fresh verification project, no prediction."""
    from labeling.push import ImageUrlResolver

    ls = ls_project.ls
    dst = ls.imagery_root / f"ml-{uuid.uuid4().hex[:6]}" / "SOAP_031.png"
    dst.parent.mkdir()
    shutil.copy(AERIAL / "SOAP_031.png", dst)
    url = ImageUrlResolver(ls.imagery_root)(str(dst))
    (tid,) = ls.client.import_tasks(
        ls_project.handle.ls_project_id, [{"data": {"image": url, "query": "the dark pond", "item_id": 1}}]
    )
    return ls_project, tid


def test_tiny_geoseg_backend_through_label_studio(review_task, tiny_models_root, monkeypatch):
    from flows.cli_ml import load_geoseg_model
    from geoseg.profiles import load_profile
    from geoseg.types import TINY_MODEL_WARNING
    from labeling.brush import rle_to_mask
    from labeling.client import connect_ml_backend
    from labeling.ml_backend import MLBackendConfig, create_app

    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    proj, tid = review_task
    client, pid = proj.ls.client, proj.handle.ls_project_id
    mv = load_profile("tiny").model_version
    # the image URL is relative to Label Studio; the access token comes from Label Studio's /setup call
    app = create_app(
        lambda: load_geoseg_model("tiny"), MLBackendConfig(timeout_s=60, label_studio_url=proj.ls.url), model_version=mv
    )
    with serve(app) as url:
        # connected while the models may still be loading: /setup answers with the version at once
        row = connect_ml_backend(client, pid, url)
        assert row["state"] == "CO", row  # Label Studio called /health and /setup and got our model_version
        assert connect_ml_backend(client, pid, url)["id"] == row["id"]  # idempotent
        assert app.state.backend._ls_token == proj.ls.token  # sent by Label Studio's /setup

        # an annotator asks for a fresh suggestion with another query (interactive pre-annotation)
        ctx = {"result": [{"from_name": "q", "to_name": "image", "type": "textarea", "value": {"text": ["trees"]}}]}
        t0 = time.perf_counter()
        resp = client.request("POST", f"/api/ml/{row['id']}/interactive-annotating",
                              json_body={"task": tid, "context": ctx})
        interactive_s = time.perf_counter() - t0
        assert "errors" not in resp, resp
        data = resp["data"]
        assert data["model_version"] == mv and "error" not in data
        for region in data["result"]:  # zero or one brush region (tiny masks are meaningless)
            assert region["value"]["brushlabels"] == ["target"]
            assert region["meta"]["text"][0].startswith(TINY_MODEL_WARNING)
            m = rle_to_mask(region["value"]["rle"], 400, 400)
            assert m.shape == (400, 400) and m.any()

        # "Retrieve predictions" (data manager action): Label Studio stores the backend's prediction on the task
        out = client.request(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": pid},
            json_body={"selectedItems": {"all": False, "included": [tid]}},
        )
        assert out["processed_items"] == 1
        preds = client.task_predictions(tid)
        assert [p["model_version"] for p in preds] == [mv]
        assert app.state.backend.loads == 1
    print(f"interactive pre-label through Label Studio: {interactive_s:.2f} s")


def test_slow_backend_gives_the_annotator_a_message_through_label_studio(review_task):
    from labeling.client import connect_ml_backend
    from labeling.ml_backend import MLBackendConfig, create_app

    proj, tid = review_task
    client, pid = proj.ls.client, proj.handle.ls_project_id
    app = create_app(
        _rect_model(delay=5.0), MLBackendConfig(timeout_s=0.5, label_studio_url=proj.ls.url)
    )
    with serve(app) as url:
        row = connect_ml_backend(client, pid, url, title="slow")
        t0 = time.perf_counter()
        resp = client.request("POST", f"/api/ml/{row['id']}/interactive-annotating",
                              json_body={"task": tid, "context": {"query": "x"}})
        assert time.perf_counter() - t0 < 2.8  # not Label Studio's 100 s predict timeout
        assert resp["data"]["result"] == [] and "did not answer within" in resp["data"]["error"]


def test_geolabel_ml_backend_command_connects_and_serves(labelstudio_server, tiny_models_root, tmp_path):
    """``geolabel ml-backend --connect`` as a user runs it: a subprocess that registers itself on the review project
    of the configured Label Studio; a pre-label is then requested through Label Studio's API."""
    import os
    import signal
    import subprocess
    import sys

    from labeling.push import ImageUrlResolver
    from labeling.server import free_port

    ls = labelstudio_server
    port, title = free_port(), f"review cli {uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "GEOLABEL_MODEL_CACHE": str(tiny_models_root),
        "GEOLABEL_LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_USER_TOKEN": ls.token,
        "GEOLABEL_IMAGERY_ROOTS": str(ls.imagery_root),
    }
    cmd = [sys.executable, "-m", "flows.cli", "ml-backend", "--port", str(port), "--profile", "tiny", "--connect",
           "--project", title, "--data-dir", str(tmp_path / "data"), "--timeout", "120"]
    log = open(tmp_path / "ml.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 180
        row = None
        while time.monotonic() < deadline and row is None:
            assert proc.poll() is None, (tmp_path / "ml.log").read_text()[-2000:]
            projects = [p for p in ls.client.projects(title=title) if p["title"] == title]
            if projects:
                rows = ls.client.request("GET", "/api/ml", params={"project": projects[0]["id"]})
                row = next((r for r in rows if r["url"].endswith(f":{port}")), None)
            time.sleep(0.5)
        assert row is not None and row["is_interactive"], (tmp_path / "ml.log").read_text()[-2000:]
        pid = projects[0]["id"]
        dst = ls.imagery_root / f"cli-{uuid.uuid4().hex[:6]}" / "SOAP_061.png"
        dst.parent.mkdir()
        shutil.copy(AERIAL / "SOAP_061.png", dst)
        (tid,) = ls.client.import_tasks(
            pid, [{"data": {"image": ImageUrlResolver(ls.imagery_root)(str(dst)), "query": "bare soil"}}]
        )
        resp = ls.client.request("POST", f"/api/ml/{row['id']}/interactive-annotating",
                                 json_body={"task": tid, "context": {"query": "the bare soil patch"}})
        assert "errors" not in resp and "error" not in resp["data"], resp
        assert resp["data"]["model_version"].startswith("geoseg-tiny-")
        out = (tmp_path / "ml.log").read_text()
        assert "tiny randomly initialised models" in out and ls.token not in out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def test_smart_tools_click_and_box_through_label_studio(review_task, tiny_models_root, monkeypatch):
    """An annotator's smart-tool click (positive, then with a negative one) and box on a real task: Label Studio
    forwards them to the backend, whose tiny SAM3 answers within the timeout with the model version; the box's mask
    stays inside the box. (Tiny random models: the masks themselves are meaningless.)"""
    from flows.cli_ml import load_geoseg_model
    from geoseg.profiles import load_profile
    from labeling.brush import rle_to_mask
    from labeling.client import connect_ml_backend
    from labeling.ml_backend import MLBackendConfig, create_app

    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    proj, tid = review_task
    client, pid = proj.ls.client, proj.handle.ls_project_id
    mv = load_profile("tiny").model_version
    app = create_app(lambda: load_geoseg_model("tiny"), MLBackendConfig(timeout_s=60, label_studio_url=proj.ls.url),
                     model_version=mv)
    size = {"original_width": 400, "original_height": 400, "image_rotation": 0}
    click = {"from_name": "click", "to_name": "image", "type": "keypointlabels", "is_positive": True, **size,
             "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["target"]}}
    negative = {**click, "is_positive": False, "value": {**click["value"], "x": 52.0}}
    box = {"from_name": "box", "to_name": "image", "type": "rectanglelabels", **size,
           "value": {"x": 25.0, "y": 25.0, "width": 25.0, "height": 25.0, "rectanglelabels": ["target"]}}
    with serve(app) as url:
        row = connect_ml_backend(client, pid, url)
        for ctx in ({"result": [click]}, {"result": [click, negative]}, {"result": [box]}):
            t0 = time.perf_counter()
            resp = client.request("POST", f"/api/ml/{row['id']}/interactive-annotating",
                                  json_body={"task": tid, "context": ctx})
            assert time.perf_counter() - t0 < 60
            data = resp["data"]
            assert "error" not in data and data["model_version"] == mv, resp
            for region in data["result"]:
                assert region["type"] == "brushlabels" and region["from_name"] == "mask"
                assert "smart tool" in region["meta"]["text"][0]
                m = rle_to_mask(region["value"]["rle"], 400, 400)
                if ctx["result"][0] is box:
                    assert not m[:100].any() and not m[200:].any() and not m[:, :100].any() and not m[:, 200:].any()
