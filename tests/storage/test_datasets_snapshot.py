"""Benchmark snapshots: stratification, versioning, immutability, manifest hashes, write -> read -> evaluate."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from geoseg.evaluation.bench import read_benchmark
from geoseg.evaluation.harness import evaluate
from storage.blobs import LocalBlobStore
from storage.datasets.coco import export_coco
from storage.datasets.select import DatasetFilter
from storage.datasets.snapshot import (
    SnapshotError,
    Stratification,
    StratificationError,
    allocate,
    create_snapshot,
    read_snapshot,
    resolve_snapshot_dir,
    stratified_sample,
    verify_snapshot,
)
from storage.db import create_all, make_engine, session_scope
from tests.fixtures.datasets import seed_from_bench
from tests.fixtures.evaluation import ColourPipeline, load_make_bench

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("snap")
    bench = read_benchmark(load_make_bench().make_bench(root / "bench", per_domain=12, size=40))
    engine = make_engine(f"sqlite:///{root / 'db.sqlite'}")
    create_all(engine)
    blobs = LocalBlobStore(root / "blobs")
    with session_scope(engine) as s:
        seeded = seed_from_bench(s, blobs, bench)
    yield engine, blobs, seeded, root
    engine.dispose()


def test_allocate_largest_remainder():
    assert allocate(810, {"Urban": 330, "Rural": 160, "Traffic": 240, "Nature": 80}) == {
        "Urban": 330, "Rural": 160, "Traffic": 240, "Nature": 80}
    assert allocate(330, {"L1": 0.6, "L2": 0.3, "L3": 0.1}) == {"L1": 198, "L2": 99, "L3": 33}
    got = allocate(8, {"Urban": 330, "Rural": 160, "Traffic": 240, "Nature": 80})
    assert sum(got.values()) == 8 and got == {"Urban": 3, "Rural": 2, "Traffic": 2, "Nature": 1}
    with pytest.raises(SnapshotError):
        allocate(3, {"a": 0})


def test_geoseg_bench_targets_and_seeded_draw():
    strat = Stratification()  # GeoSeg-Bench: 810 pairs
    t = strat.targets()
    assert sum(t.values()) == 810
    assert sum(n for (d, _), n in t.items() if d == "Traffic") == 240
    assert sum(n for (_, lv), n in t.items() if lv == "L1") == pytest.approx(0.6 * 810, abs=2)
    pool = {(d, lv): list(range(i * 1000, i * 1000 + 400)) for i, (d, lv) in enumerate(t)}
    a, _ = stratified_sample(pool, strat)
    b, _ = stratified_sample(pool, strat)
    c, _ = stratified_sample(pool, Stratification(seed=1))
    assert a == b != c and len(a) == 810 and len(set(a)) == 810
    with pytest.raises(StratificationError, match="Urban/L1"):
        stratified_sample({k: v[:10] for k, v in pool.items()}, strat)
    short, missing = stratified_sample({k: v[:10] for k, v in pool.items()}, Stratification(allow_shortfall=True))
    assert len(short) < 810 and missing["Urban/L1"] == {"wanted": 198, "available": 10}


def test_write_read_evaluate_round_trip(store, tmp_path):
    engine, blobs, seeded, root = store
    with session_scope(engine) as s:
        info = create_snapshot(s, blobs, "bench-a", tmp_path / "snaps", description="round trip")
    assert info.version == 1 and info.n_triplets == len(seeded.triplet_masks)
    assert verify_snapshot(info.path) == []
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"annotations/Urban.json", f"masks/{min(seeded.triplet_masks)}.png"}
    bench = read_snapshot(info.path)
    assert bench.layout == "geoseg" and len(bench) == info.n_triplets
    for sample in bench:  # every mask comes back exactly
        np.testing.assert_array_equal(sample.load_mask(), seeded.triplet_masks[int(sample.id)])
    run = evaluate(ColourPipeline(), bench, tmp_path / "cache")
    assert len(run.outcomes) == info.n_triplets and run.n_errors == 0
    assert 0.0 < run.aggregate()[("all",)]["mean_iou"] < 1.0
    # the COCO export of the snapshot holds exactly its members
    with session_scope(engine) as s:
        res = export_coco(s, blobs, tmp_path / "coco", DatasetFilter(snapshot="bench-a@1"))
    assert res.n_annotations == info.n_triplets and res.n_no_target == 0


def test_snapshots_are_immutable_and_versioned(store, tmp_path):
    engine, blobs, seeded, root = store
    snaps = tmp_path / "snaps"
    with session_scope(engine) as s:
        v1 = create_snapshot(s, blobs, "strat", snaps, stratify=Stratification(total=8, seed=3))
        v2 = create_snapshot(s, blobs, "strat", snaps, stratify=Stratification(total=8, seed=4))
    assert (v1.version, v2.version) == (1, 2) and v1.path != v2.path
    assert sum(n for lv in v1.counts.values() for n in lv.values()) == 8
    want = Stratification(total=8).targets()
    got = Counter({(d, lv): n for d, lvs in v1.counts.items() for lv, n in lvs.items()})
    assert +got == +Counter(want)
    # files are read-only; tampering is detected; a missing directory is re-written from the database
    mask = next((v1.path / "masks").iterdir())
    assert not mask.stat().st_mode & 0o222
    mask.chmod(0o644)
    mask.write_bytes(b"tampered")
    assert any("sha256 differs" in p for p in verify_snapshot(v1.path))
    with pytest.raises(SnapshotError, match="verification"):
        read_snapshot(v1.path)
    other = tmp_path / "elsewhere"
    with session_scope(engine) as s:
        again = resolve_snapshot_dir(s, blobs, "strat@1", other)
    assert verify_snapshot(again) == []
    m1 = json.loads((again / "manifest.json").read_text())
    assert m1["members_sha256"] == v1.manifest_sha256
    with session_scope(engine) as s, pytest.raises(SnapshotError, match="nothing to snapshot"):
        create_snapshot(s, blobs, "empty", snaps, filters=DatasetFilter(domains=("Mars",)))
    with session_scope(engine) as s, pytest.raises(StratificationError):
        create_snapshot(s, blobs, "toolarge", snaps, stratify=Stratification())


def test_leftover_directory_of_an_uncommitted_create_is_refused(store, tmp_path):
    engine, blobs, seeded, root = store
    snaps = tmp_path / "snaps"
    with pytest.raises(RuntimeError, match="boom"), session_scope(engine) as s:
        create_snapshot(s, blobs, "crashy", snaps, limit=3)
        raise RuntimeError("boom")  # the transaction rolls back after the files were written
    assert (snaps / "crashy" / "v1").is_dir()
    with session_scope(engine) as s, pytest.raises(SnapshotError, match="other members"):
        create_snapshot(s, blobs, "crashy", snaps, limit=4)


def test_version_taken_concurrently_is_retried(store, tmp_path, monkeypatch):
    import storage.datasets.snapshot as snapmod

    engine, blobs, seeded, root = store
    with session_scope(engine) as s:
        create_snapshot(s, blobs, "race", tmp_path / "snaps", limit=2)
    real = snapmod.next_version
    calls = []

    def stale_then_real(session, name):  # the first read is stale, as if another process inserted v1 meanwhile
        calls.append(name)
        return 1 if len(calls) == 1 else real(session, name)

    monkeypatch.setattr(snapmod, "next_version", stale_then_real)
    with session_scope(engine) as s:
        info = create_snapshot(s, blobs, "race", tmp_path / "snaps", limit=3)
    assert info.version == 2 and len(calls) == 2
