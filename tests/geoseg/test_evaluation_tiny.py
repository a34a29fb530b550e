"""The harness with the real GeoSegPipeline on the tiny random models (mechanics only: the masks mean nothing).

1. Snapshot round trip: seed a database, snapshot it, read the snapshot back, evaluate the all-tiny pipeline on it
   and write the report (which carries the tiny-model warning).
2. Ablations (Table 3 shape) with a deterministic box double as grounder, so that the tiny CLIP Surgery matcher and
   the tiny SAM3 segmenter actually run on both routes.
"""

from __future__ import annotations

import pytest

from geoseg.evaluation.bench import read_benchmark
from geoseg.evaluation.harness import evaluate, evaluate_ablations
from geoseg.evaluation.report import write_report
from geoseg.pipeline import GeoSegPipeline
from geoseg.profiles import load_profile
from geoseg.types import TINY_MODEL_WARNING
from storage.blobs import LocalBlobStore
from storage.datasets.snapshot import create_snapshot, read_snapshot
from storage.db import create_all, make_engine, session_scope
from tests.fixtures.datasets import seed_from_bench
from tests.fixtures.evaluation import ColourBoxGrounder, load_make_bench

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine run ~30x faster on one intra-op thread (no oversubscription)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return read_benchmark(load_make_bench().make_bench(tmp_path_factory.mktemp("tb") / "b", per_domain=1, size=48))


def test_snapshot_to_tiny_pipeline_report(bench, tmp_path, tiny_grounder, tiny_matcher, tiny_segmenter):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_all(engine)
    blobs = LocalBlobStore(tmp_path / "blobs")
    with session_scope(engine) as s:
        seeded = seed_from_bench(s, blobs, bench)
        info = create_snapshot(s, blobs, "tiny-rt", tmp_path / "snaps")
    engine.dispose()
    snap = read_snapshot(info.path)
    assert len(snap) == len(seeded.triplet_masks)
    pipe = GeoSegPipeline(load_profile("tiny"), tiny_grounder, tiny_matcher, tiny_segmenter)
    assert pipe.meaningless
    run = evaluate(pipe, snap, tmp_path / "cache")
    assert run.meaningless and len(run.outcomes) == len(snap) and run.n_errors == 0
    assert all(o.model_version == pipe.model_version for o in run.outcomes)
    files = write_report(tmp_path / "report", {"full": run})
    assert TINY_MODEL_WARNING in files.markdown.read_text()
    assert TINY_MODEL_WARNING in files.html.read_text()
    # rerun: everything served from the per-model-version cache
    again = evaluate(GeoSegPipeline(load_profile("tiny"), tiny_grounder, tiny_matcher, tiny_segmenter), snap,
                     tmp_path / "cache")
    assert again.n_cached == len(snap)


def test_ablations_with_tiny_matcher_and_segmenter(bench, tmp_path, tiny_matcher, tiny_segmenter):
    base = GeoSegPipeline(load_profile("tiny"), ColourBoxGrounder(), tiny_matcher, tiny_segmenter)
    runs = evaluate_ablations(base.with_config, base.config, bench, tmp_path / "cache")
    assert list(runs) == ["full", "no_refine", "no_route_a", "no_route_b"]
    assert len({r.model_version for r in runs.values()}) == 4  # each row cached apart
    for run in runs.values():
        assert run.n_errors == 0, [o.error for o in run.outcomes if o.error]
        assert len(run.outcomes) == len(bench)
        assert all("grounding" in o.timings for o in run.outcomes)
    assert all(o.route in ("text", "empty") for o in runs["no_route_a"].outcomes)
    assert all(o.route in ("point", "empty") for o in runs["no_route_b"].outcomes)
    files = write_report(tmp_path / "report", runs)
    md = files.markdown.read_text()
    assert "w/o Route B" in md and (files.out_dir / "ablation.csv").is_file()
