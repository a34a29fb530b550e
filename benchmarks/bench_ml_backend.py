"""Benchmark: latency per /predict request of the GeoSeg ML backend with the tiny models, direct and through a REAL
Label Studio (its interactive-annotating API), on a real 400x400 aerial image.

    .venv/bin/python benchmarks/bench_ml_backend.py [--requests 20] [--concurrency 1] [--profile tiny]

Starts a local Label Studio from .venv-ls in a temp dir (seeded from the test template in
~/.cache/geolabel/labelstudio-<version>-t<layout> when it exists), a review project with one task (image served by Label
Studio's local-files), and the ML backend (uvicorn, loopback) with the profile's models loaded once. Then times:

* ``direct``: POST /predict to the backend (backend downloads the image from Label Studio, decodes it, runs GeoSeg,
  encodes the brush RLE);
* ``via LS``: POST /api/ml/{id}/interactive-annotating on Label Studio, which calls the backend's /predict;
* ``burst``: ``--burst`` simultaneous direct requests through ``--concurrency`` model slots (wall time, and each
  request's latency, queueing included).

Tiny-model masks are meaningless; this measures the serving path, not mask quality.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return (
        f"median {statistics.median(xs) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  "
        f"min {xs[0] * 1000:7.1f} ms  (n={len(xs)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--burst", type=int, default=4)
    ap.add_argument("--profile", default="tiny")
    args = ap.parse_args()

    import httpx

    from benchmarks.common import label_studio_template, serve
    from flows.cli_ml import load_geoseg_model
    from geoseg.registry import model_version_of
    from labeling.client import LabelStudioClient, connect_ml_backend
    from labeling.ml_backend import MLBackendConfig, create_app
    from labeling.project import label_config
    from labeling.push import ImageUrlResolver
    from labeling.server import LabelStudioServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-ml-"))
    shutil.copytree(label_studio_template(), tmp / "ls")
    imagery = tmp / "imagery"
    imagery.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "aerial" / "SOAP_031.png", imagery / "SOAP_031.png")
    srv = LabelStudioServer(tmp / "ls", imagery_root=imagery)
    t = time.perf_counter()
    st = srv.start()
    print(f"Label Studio {st.version} up in {time.perf_counter() - t:.1f} s")
    client = LabelStudioClient(st.url, srv.token())
    try:
        proj = client.create_project("bench ml backend", label_config())
        client.create_local_storage(proj["id"], str(imagery))
        url = ImageUrlResolver(imagery)(str(imagery / "SOAP_031.png"))
        (tid,) = client.import_tasks(proj["id"], [{"data": {"image": url, "query": "the dark pond"}}])
        task = client.get_task(tid)

        cfg = MLBackendConfig(max_concurrency=args.concurrency, timeout_s=300, label_studio_url=st.url)
        t = time.perf_counter()
        app = create_app(lambda: load_geoseg_model(args.profile), cfg, model_version=model_version_of(args.profile))
        with serve(app) as ml_url:
            row = connect_ml_backend(client, proj["id"], ml_url)
            body = {"tasks": [{"id": tid, "data": task["data"]}], "params": {"context": {"query": "trees"}}}
            r = httpx.post(ml_url + "/predict", json=body, timeout=600).json()  # waits for the model load
            print(f"models loaded + first request: {time.perf_counter() - t:.1f} s "
                  f"(model_version {r['model_version']}; warning: {r.get('warning', '-')[:60]})")
            assert "errors" not in r, r

            direct = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = httpx.post(ml_url + "/predict", json=body, timeout=600).json()
                direct.append(time.perf_counter() - t)
                assert "errors" not in r, r
            via_ls = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = client.request("POST", f"/api/ml/{row['id']}/interactive-annotating",
                                   json_body={"task": tid, "context": {"query": "trees"}})
                via_ls.append(time.perf_counter() - t)
                assert "errors" not in r and "error" not in r["data"], r

            def one(_: int) -> float:
                t0 = time.perf_counter()
                httpx.post(ml_url + "/predict", json=body, timeout=600).raise_for_status()
                return time.perf_counter() - t0

            t = time.perf_counter()
            with ThreadPoolExecutor(args.burst) as ex:
                burst = list(ex.map(one, range(args.burst)))
            burst_wall = time.perf_counter() - t
            print(f"profile {args.profile}, concurrency {args.concurrency}, 400x400 PNG")
            print(f"  direct /predict        : {_stats(direct)}")
            print(f"  via LS interactive API : {_stats(via_ls)}")
            print(f"  burst of {args.burst} direct      : wall {burst_wall * 1000:.0f} ms, per request {_stats(burst)}")
            print(f"  max predictions in flight: {app.state.backend.max_in_flight}")
    finally:
        client.close()
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
