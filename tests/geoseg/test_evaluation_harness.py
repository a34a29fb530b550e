"""Benchmark readers, the resumable harness and the report, on the generated test benchmark."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from geoseg.evaluation.bench import BenchmarkError, normalise_level, read_benchmark
from geoseg.evaluation.harness import evaluate
from geoseg.evaluation.overlay import composite
from geoseg.evaluation.report import write_report
from tests.fixtures.evaluation import ColourPipeline, load_make_bench


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return load_make_bench().make_bench(tmp_path_factory.mktemp("bench") / "b", per_domain=4, size=48)


def test_generator_is_deterministic(tmp_path):
    mb = load_make_bench()
    a, b = mb.make_bench(tmp_path / "a", 2, 32), mb.make_bench(tmp_path / "b", 2, 32)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_read_geoseg_layout(bench_dir):
    b = read_benchmark(bench_dir)
    assert b.layout == "geoseg" and len(b) == 16
    assert b.domains() == ["Nature", "Rural", "Traffic", "Urban"]
    assert {s.level for s in b} == {"L1", "L2", "L3"}
    s = b.samples[0]
    assert s.load_image().shape == (48, 48, 3) and s.load_mask().dtype == bool and s.load_mask().any()


def test_read_earthreason_layout(tmp_path):
    root = load_make_bench().make_bench(tmp_path / "er", 2, 32, layout="earthreason")
    b = read_benchmark(root)
    assert b.layout == "earthreason" and len(b) == 8 and {s.domain for s in b} == {"EarthReason"}
    assert b.samples[0].load_mask().any() and b.samples[0].query.startswith(("Segment", "Which", "Given"))
    both = read_benchmark(root, all_questions=True)
    assert len(both) == 16 and {s.id for s in both} >= {f"{b.samples[0].id}#0", f"{b.samples[0].id}#1"}


@pytest.mark.parametrize("value,expected", [("L2", "L2"), (3, "L3"), ("1", "L1"), ("hard", "L3")])
def test_normalise_level(value, expected):
    assert normalise_level(value) == expected


def test_bad_benchmarks_raise_clear_errors(tmp_path, bench_dir):
    with pytest.raises(BenchmarkError, match="neither"):
        read_benchmark(tmp_path)
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "Urban.json").write_text("{not json")
    with pytest.raises(BenchmarkError, match="Urban.json"):
        read_benchmark(bad)
    (bad / "annotations" / "Urban.json").write_text(json.dumps([{"id": 1, "file_name": "x.png",
                                                                 "mask_path": "m.png", "question": "q"}]))
    with pytest.raises(BenchmarkError, match="not found"):
        read_benchmark(bad)
    with pytest.raises(BenchmarkError, match="difficulty"):
        normalise_level("L9")


def test_composite_colours():
    img = np.zeros((2, 2, 3), np.uint8)
    gt = np.array([[1, 1], [0, 0]], bool)
    pred = np.array([[1, 0], [1, 0]], bool)
    c = composite(img, gt, pred, alpha=1.0)
    assert c[0, 0].tolist() == [255, 255, 0] and c[0, 1].tolist() == [0, 255, 0]
    assert c[1, 0].tolist() == [255, 0, 0] and c[1, 1].tolist() == [0, 0, 0]


def test_harness_scores_caches_and_resumes(bench_dir, tmp_path):
    bench = read_benchmark(bench_dir)
    pipe = ColourPipeline(fail_on="flood")
    run = evaluate(pipe, bench, tmp_path / "cache")
    assert pipe.calls == 16 and len(run.outcomes) == 16 and run.n_cached == 0
    errs = [o for o in run.outcomes if o.error]
    assert errs and all("RuntimeError" in o.error and o.metrics["iou"] == 0.0 for o in errs)
    # per-sample metrics agree with a direct recomputation from the cached mask
    o = next(o for o in run.outcomes if not o.error)
    s = run.sample(o.sample_id)
    inter = np.count_nonzero(run.load_prediction(o) & s.load_mask())
    union = np.count_nonzero(run.load_prediction(o) | s.load_mask())
    assert o.metrics["iou"] == pytest.approx(inter / union)
    # a second run with the same model version reads the cache: the model is not called again
    pipe2 = ColourPipeline(fail_on="flood")
    run2 = evaluate(pipe2, bench, tmp_path / "cache")
    assert pipe2.calls == 0 and run2.n_cached == 16
    assert [o.metrics for o in run2.outcomes] == [o.metrics for o in run.outcomes]
    # a torn cache entry (crash mid-write) is re-run, the others are kept
    entries = sorted(run.cache_dir.glob("*.json"))
    entries[0].write_text("{")
    pipe3 = ColourPipeline(fail_on="flood")
    evaluate(pipe3, bench, tmp_path / "cache")
    assert pipe3.calls == 1
    agg = run.aggregate()
    assert agg[("all",)]["n"] == 16 and ("x", "Urban", "L1") in agg


def test_report_has_every_table_and_plot(bench_dir, tmp_path):
    bench = read_benchmark(bench_dir)
    runs = {name: evaluate(ColourPipeline(threshold=t, version=f"double-{name}"), bench, tmp_path / "cache",
                           label=name)
            for name, t in (("full", 60.0), ("no_refine", 80.0), ("no_route_a", 40.0), ("no_route_b", 100.0))}
    quality = [{"model_version": "v1", "n": 3, "acceptance_rate": 0.66}]
    judge = [{"group": "all", "n": 2, "faithfulness": 3.5}]
    files = write_report(tmp_path / "report", runs, quality=quality, judge=judge, gallery_n=2)
    md = files.markdown.read_text()
    for heading in ("## Overall", "per domain x level", "Table 3", "## Timings", "Pre-label quality", "MLLM judge",
                    "## Gallery"):
        assert heading in md
    for label in ("GeoSeg (full)", "w/o refinement", "w/o Route A", "w/o Route B"):
        assert label in md
    names = {p.name for p in files.plots}
    assert names == {"domain_level_miou.png", "iou_hist.png", "ablation.png"}
    assert all(p.stat().st_size > 1000 for p in files.plots)
    assert len(files.gallery) == 4
    html = files.html.read_text()
    for p in (*files.plots, *files.gallery):
        assert p.relative_to(files.out_dir).as_posix() in html
    with (files.out_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == set(runs)
    assert any(r["group"] == "domain x level" for r in rows)
    with (files.out_dir / "ablation.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
