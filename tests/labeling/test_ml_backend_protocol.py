"""The ML backend's protocol, limits and error messages, served by a real uvicorn on a loopback port.

The models here are small stand-ins that draw a fixed rectangle, sleep or raise: they produce the faults (a slow or
failing model, one still loading) that a test cannot get from the tiny GeoSeg models on demand. The real tiny GeoSeg
model behind the same app, connected to a real Label Studio, is in ``test_ml_backend_labelstudio.py``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from labeling.brush import rle_to_mask
from labeling.ml_backend import MLBackendConfig, ModelHandle, context_query, create_app
from tests.helpers.ml_backend import rect_model as _rect_model
from tests.helpers.ml_backend import serve


def _task(i: int = 1, query: str = "the pond") -> dict:
    return {"id": i, "data": {"image": "/data/local-files/?d=x.png", "query": query}}


def _fetch(url: str) -> bytes:
    assert url.startswith("/data/local-files/")
    return b"image"


def test_health_setup_predict_webhook():
    load = _rect_model(load_delay=1.0)
    app = create_app(load, MLBackendConfig(timeout_s=10), fetch_image=_fetch)
    with serve(app) as url:
        t0 = time.perf_counter()
        h = httpx.get(url + "/health", timeout=1).json()  # Label Studio waits 1 s: answered while loading
        assert time.perf_counter() - t0 < 1.0 and h["status"] == "UP" and h["models_loaded"] is False
        s = httpx.post(url + "/setup", json={"project": "1.1", "hostname": "http://x", "access_token": "secret"},
                       timeout=10)
        assert s.status_code == 200 and s.json() == {"model_version": "rect-v1"}
        h = httpx.get(url + "/health").json()
        assert h["models_loaded"] and h["model_version"] == "rect-v1" and "secret" not in str(h)

        r = httpx.post(url + "/predict", json={"tasks": [_task(1), _task(2, "trees")], "params": {}}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and len(body["results"]) == 2 and body["model_version"] == "rect-v1"
        assert body["warning"] == "meaningless test model" and "errors" not in body
        res = body["results"][0]
        assert res["model_version"] == "rect-v1" and res["score"] == 0.5
        (region,) = res["result"]
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["target"]
        assert region["meta"]["text"][0].startswith("meaningless test model")
        mask = rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"])
        assert mask.sum() == 45 and mask[5:10, 3:12].all()
        assert load.calls == ["the pond", "trees"]

        # interactive: a new query in the context wins over data.query
        ctx = {"result": [{"type": "textarea", "value": {"text": ["  a new  query "]}}]}
        r = httpx.post(url + "/predict", json={"tasks": [_task(3)], "params": {"context": ctx}}, timeout=10)
        assert r.json()["results"][0]["result"] and load.calls[-1] == "a new  query"

        w = httpx.post(url + "/webhook", json={"action": "ANNOTATION_CREATED"})
        assert w.status_code == 201 and w.json()["status"] == "ok"
        assert httpx.post(url + "/predict", content=b"not json").status_code == 400
        assert "non-empty list" in httpx.post(url + "/predict", json={"tasks": []}).json()["error"]
        assert app.state.backend.loads == 1  # models load once


def test_context_query_forms():
    assert context_query(None) is None
    assert context_query({"query": " x "}) == "x"
    assert context_query({"result": [{"type": "textarea", "value": {"text": "y"}}]}) == "y"
    assert context_query({"result": [{"type": "keypointlabels", "value": {"x": 1}}]}) is None


def test_concurrency_is_bounded():
    load = _rect_model(delay=0.3)
    app = create_app(load, MLBackendConfig(max_concurrency=2, timeout_s=30), fetch_image=_fetch)
    with serve(app) as url:
        httpx.post(url + "/setup", json={}, timeout=30)

        def one(i: int) -> dict:
            return httpx.post(url + "/predict", json={"tasks": [_task(i)]}, timeout=30).json()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(6) as ex:
            outs = list(ex.map(one, range(6)))
        wall = time.perf_counter() - t0
        # health stays responsive while both slots are busy
        assert all(o["results"][0]["result"] for o in outs)
        be = app.state.backend
        assert be.max_in_flight == 2 and wall >= 0.85  # 6 x 0.3 s through 2 slots


def test_slow_model_gives_a_clear_message_not_a_hang():
    load = _rect_model(delay=5.0)
    app = create_app(load, MLBackendConfig(max_concurrency=1, timeout_s=0.5, batch_budget_s=1.0), fetch_image=_fetch)
    with serve(app) as url:
        httpx.post(url + "/setup", json={}, timeout=30)
        t0 = time.perf_counter()
        r = httpx.post(url + "/predict", json={"tasks": [_task()], "params": {"context": {}}}, timeout=10).json()
        assert time.perf_counter() - t0 < 2.8
        (res,) = r["results"]
        assert res["result"] == [] and "did not answer within" in res["error"] and res["model_version"] == "rect-v1"
        # the slot is still held by the running model: the next request says the model is busy
        r2 = httpx.post(url + "/predict", json={"tasks": [_task(2)]}, timeout=10).json()
        assert "result" not in r2["results"][0] and "busy" in r2["errors"][0]
        t0 = time.perf_counter()
        assert httpx.get(url + "/health", timeout=1).status_code == 200
        assert time.perf_counter() - t0 < 1.0


def test_failing_model_and_failed_load_are_reported():
    app = create_app(_rect_model(fail=True), MLBackendConfig(timeout_s=5), fetch_image=_fetch)
    with serve(app) as url:
        r = httpx.post(url + "/predict", json={"tasks": [_task()], "params": {"context": {}}}, timeout=10).json()
        assert r["results"][0]["error"] == "GeoSeg pre-label failed: RuntimeError: CUDA out of memory (simulated)"
        r = httpx.post(url + "/predict", json={"tasks": [{"id": 9, "data": {"image": "/x"}}]}, timeout=10).json()
        assert "has no query" in r["errors"][0]

    def broken() -> ModelHandle:
        raise FileNotFoundError("no weights at /models/sam3")

    app = create_app(broken, MLBackendConfig(timeout_s=5), fetch_image=_fetch)
    with serve(app) as url:
        time.sleep(0.2)
        h = httpx.get(url + "/health")
        assert h.status_code == 503 and "no weights" in h.json()["error"]
        s = httpx.post(url + "/setup", json={})
        assert s.status_code == 503 and "failed to load" in s.json()["error"]
        r = httpx.post(url + "/predict", json={"tasks": [_task()]}, timeout=10).json()
        assert "failed to load" in r["errors"][0] and "no weights" in r["errors"][0]


def test_relative_image_without_label_studio_address_is_explained():
    app = create_app(_rect_model(), MLBackendConfig(timeout_s=5))
    with serve(app) as url:
        r = httpx.post(url + "/predict", json={"tasks": [_task()]}, timeout=10).json()
        assert "address is unknown" in r["errors"][0]
    with pytest.raises(ValueError, match="max_concurrency"):
        MLBackendConfig(max_concurrency=0)
    assert "s3cr3t" not in repr(MLBackendConfig(label_studio_token="s3cr3t"))


def test_task_images_only_from_label_studio_or_allowed_origins():
    app = create_app(_rect_model(), MLBackendConfig(timeout_s=5, label_studio_url="http://127.0.0.1:9"))
    with serve(app) as url:
        task = {"id": 1, "data": {"image": "http://169.254.169.254/latest/meta-data", "query": "x"}}
        r = httpx.post(url + "/predict", json={"tasks": [task]}, timeout=10).json()
        assert "refusing to fetch the task image from http://169.254.169.254" in r["errors"][0]
        task["data"]["image"] = "file:///etc/passwd"
        r = httpx.post(url + "/predict", json={"tasks": [task]}, timeout=10).json()
        assert "neither http(s) nor a Label Studio /data/ path" in r["errors"][0]


def test_batch_answers_within_its_budget_with_what_is_done():
    """"Retrieve predictions" on many tasks: the answer comes before Label Studio's own predict timeout would discard
    it; finished tasks carry results, the others an error and no result (Label Studio stores nothing for them)."""
    load = _rect_model(delay=0.4)
    cfg = MLBackendConfig(max_concurrency=1, timeout_s=5, batch_budget_s=1.5)
    app = create_app(load, cfg, fetch_image=_fetch)
    with serve(app) as url:
        httpx.post(url + "/setup", json={}, timeout=30)
        t0 = time.perf_counter()
        r = httpx.post(url + "/predict", json={"tasks": [_task(i) for i in range(10)]}, timeout=30).json()
        wall = time.perf_counter() - t0
        done = [o for o in r["results"] if "result" in o]
        left = [o for o in r["results"] if "error" in o]
        assert len(r["results"]) == 10 and 1 <= len(done) <= 5 and len(done) + len(left) == 10
        assert all("retrieve predictions again" in o["error"] for o in left)
        assert wall < 1.5 + 0.4 + 1.5  # budget + one running model + slack on a loaded machine
