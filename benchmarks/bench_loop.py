"""Loop benchmark: N items through ingest -> preannotate -> push -> sync -> export against a real Label Studio.

The models are replaced by "instant" implementations of the Grounder/Matcher/Segmenter protocols (a centred box, a
radial similarity map, disk/ellipse masks) so only orchestration is timed: Prefect tasks, database upserts, blob
writes, Label Studio imports and exports. Their masks are geometric placeholders and mean nothing.

The ceiling: the same tasks (same data, same predictions) bulk-imported straight into a second Label Studio project
with one ``POST /api/projects/{id}/import`` per chunk, measured in the same run.

    .venv/bin/python -m benchmarks.bench_loop --items 1000 [--json out.json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import register_instant, start_label_studio

# --- the benchmark --------------------------------------------------------------------------------------------------

AERIAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "aerial"
BROWSER_IMAGES = ("OSBS_029.tif", "SOAP_031.png", "SOAP_061.png", "AWPE_pigeon_lake_drone.jpg", "L7_ETMs.tif", "lc.tif")


def write_queries(path: Path, n_items: int) -> Path:
    """``n_items`` distinct (image, query) rows spread over the six aerial images."""
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "query", "level", "domain"])
        for k in range(n_items):
            img = BROWSER_IMAGES[k % len(BROWSER_IMAGES)]
            w.writerow([img, f"benchmark target number {k}", ("L1", "L2", "L3")[k % 3], "Nature"])
    return path


def _stage(name: str, n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "stage": name,
        "items": n,
        "seconds": round(seconds, 3),
        "items_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "ms_per_item": round(1000 * seconds / n, 2) if n else None,
        **extra,
    }


def _ceilings(client: Any, ls_project_id: int, push_batch: int, annotate: bool, out: dict[str, Any]) -> None:
    """Label Studio's own rates in the same run: the pushed tasks bulk-imported straight into a second project (same
    chunk size), and, with ``annotate``, every task annotated (8 API clients) then read back (sync's floor)."""
    from concurrent.futures import ThreadPoolExecutor

    from labeling.project import label_config
    from labeling.simulated_annotator import verdict_region

    tasks = list(client.iter_tasks(ls_project_id, fields="all", page_size=500))
    raw = client.create_project("bench raw import", label_config())
    payloads = [
        {
            "data": t["data"],
            "predictions": [
                {k: p[k] for k in ("result", "model_version", "score") if p.get(k) is not None}
                for p in t["predictions"]
            ],
        }
        for t in tasks
    ]
    t0 = time.perf_counter()
    for i in range(0, len(payloads), push_batch):
        client.import_tasks(int(raw["id"]), payloads[i : i + push_batch])
    out["raw_import"] = _stage("raw LS bulk import", len(payloads), time.perf_counter() - t0)
    if not annotate:  # the annotators' part: not loop orchestration
        return

    def annotate_one(task: dict[str, Any]) -> None:
        res = [r for p in task["predictions"] for r in p["result"]] + [verdict_region("accept")]
        client.create_annotation(int(task["id"]), res, lead_time=5.0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(annotate_one, tasks))
    out["annotate_api_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    n_read = sum(1 for _ in client.iter_tasks(ls_project_id, fields="all", page_size=100))
    out["raw_read"] = _stage("raw LS task read (fields=all)", n_read, time.perf_counter() - t0)


def _orchestration_per_item(out: dict[str, Any]) -> None:
    """Orchestration per item = stage time minus the Label Studio work it cannot avoid (its ceiling, same run)."""
    by = {s["stage"]: s for s in out["stages"]}
    out["push_vs_raw"] = round(by["push"]["items_per_s"] / out["raw_import"]["items_per_s"], 3)
    n = max(1, by["push"]["items"])
    by["push"]["orchestration_ms_per_item"] = round(
        1000 * (by["push"]["seconds"] - out["raw_import"]["seconds"]) / n, 2
    )
    if "raw_read" in out and by["sync"]["items"]:
        extra = by["sync"]["seconds"] - out["raw_read"]["seconds"]
        by["sync"]["orchestration_ms_per_item"] = round(1000 * extra / by["sync"]["items"], 2)
    for name in ("ingest", "export"):
        by[name]["orchestration_ms_per_item"] = by[name]["ms_per_item"]  # no model or Label Studio work inside


def run_benchmark(n_items: int, root: Path, *, annotate: bool = True, push_batch: int = 200) -> dict[str, Any]:
    import os

    from prefect.testing.utilities import prefect_test_harness

    from flows.datasets import export_flow
    from flows.ingest import ingest_flow
    from flows.labeling_flows import label_studio_client, push_flow, sync_flow
    from flows.preannotate import preannotate_flow
    from flows.runtime import open_runtime, settings_from

    root.mkdir(parents=True, exist_ok=True)
    srv, token = start_label_studio(root)
    os.environ["LABEL_STUDIO_USER_TOKEN"] = token.get_secret_value()
    out: dict[str, Any] = {"items": n_items, "stages": []}
    try:
        overrides = {"data_dir": str(root / "data"), "label_studio_url": srv.status().url}
        queries = write_queries(root / "queries.csv", n_items)
        profile = register_instant("instant-bench")
        with prefect_test_harness(server_startup_timeout=180):
            t = time.perf_counter()
            ing = ingest_flow(str(AERIAL), str(queries), settings_overrides=overrides)
            out["stages"].append(_stage("ingest", ing.items_new, time.perf_counter() - t))
            assert ing.items_new == n_items, ing

            t = time.perf_counter()
            pre = preannotate_flow(profile, settings_overrides=overrides, batch_size=64)
            dt = time.perf_counter() - t
            orch = max(0.0, dt - pre.seconds_model)
            out["stages"].append(
                _stage(
                    "preannotate",
                    pre.predicted,
                    dt,
                    model_seconds=round(pre.seconds_model, 3),
                    orchestration_ms_per_item=round(1000 * orch / max(1, pre.predicted), 2),
                )
            )

            t = time.perf_counter()
            pushed = push_flow(profile, settings_overrides=overrides, batch_size=push_batch, project_title="bench loop")
            out["stages"].append(
                _stage(
                    "push",
                    pushed.pushed,
                    time.perf_counter() - t,
                    ls_requests=pushed.requests,
                    push_predictions_seconds=round(pushed.seconds, 3),  # labeling.push itself, without flow overhead
                    push_setup_seconds=round(pushed.setup_seconds, 3),  # project check, pending rows, renditions
                )
            )

            rt = open_runtime(settings_from(overrides))
            with label_studio_client(rt.settings) as client:
                _ceilings(client, pushed.ls_project_id, push_batch, annotate, out)

            t = time.perf_counter()
            synced = sync_flow(settings_overrides=overrides, project_title="bench loop")
            out["stages"].append(_stage("sync", synced.upserted, time.perf_counter() - t))

            t = time.perf_counter()
            exp = export_flow(str(root / "coco"), settings_overrides=overrides)
            out["stages"].append(_stage("export", exp["annotations"], time.perf_counter() - t))
    finally:
        srv.stop()
    _orchestration_per_item(out)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--no-annotate", action="store_true", help="sync with nothing annotated")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-loop-"))
    res = run_benchmark(args.items, root, annotate=not args.no_annotate)
    print(f"{'stage':<32}{'items':>7}{'seconds':>10}{'items/s':>10}{'ms/item':>10}")
    for s in [*res["stages"], res["raw_import"], *([res["raw_read"]] if "raw_read" in res else [])]:
        print(f"{s['stage']:<32}{s['items']:>7}{s['seconds']:>10}{s['items_per_s']!s:>10}{s['ms_per_item']!s:>10}")
    print(f"push / raw import rate: {res['push_vs_raw']}")
    orch = {s["stage"]: s.get("orchestration_ms_per_item") for s in res["stages"]}
    print(f"orchestration ms/item (stage time minus model or Label Studio ceiling): {orch}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
