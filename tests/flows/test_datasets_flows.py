"""The datasets flows through the CLI, on Prefect's test harness, a real SQLite database and the tiny models:
``geolabel snapshot create`` -> ``snapshot list/verify`` -> ``export coco --snapshot`` -> ``evaluate --benchmark
SNAPSHOT --ablations --judge tiny`` (masks and judge scores from tiny models mean nothing: mechanics only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from geoseg.evaluation.bench import read_benchmark
from geoseg.types import TINY_MODEL_WARNING
from tests.fixtures.datasets import seed_from_bench
from tests.fixtures.evaluation import load_make_bench

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def geolabel_env(tmp_path, monkeypatch, tiny_models_root, tiny_clip_dir, tiny_sam3_dir, tiny_grounder_dir):
    import torch

    from flows.runtime import forget_runtimes, open_runtime
    from storage.settings import Settings

    for k in ("GEOLABEL_CONFIG", "GEOLABEL_DATABASE_URL", "GEOLABEL_BLOB_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GEOLABEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    q = Path(tiny_models_root) / "qwen3vl"
    if not q.exists():
        q.symlink_to(tiny_grounder_dir, target_is_directory=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bench = read_benchmark(load_make_bench().make_bench(tmp_path / "bench", per_domain=2, size=40))
    rt = open_runtime(Settings.load())
    with rt.session() as s:
        seeded = seed_from_bench(s, rt.blobs, bench)
    yield tmp_path, seeded
    torch.set_num_threads(threads)
    forget_runtimes()


def _run(capsys, *argv: str) -> dict | list | str:
    main([*argv, "--json"])
    out = capsys.readouterr().out
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return out


def test_snapshot_export_evaluate_through_the_cli(prefect_harness, geolabel_env, capsys):
    tmp, seeded = geolabel_env
    n = len(seeded.triplet_masks)
    info = _run(capsys, "snapshot", "create", "clibench", "--description", "cli test")
    assert info["ref"] == "clibench@1" and info["triplets"] == n
    info2 = _run(capsys, "snapshot", "create", "clibench", "--stratify", "--total", "4", "--seed", "2",
                 "--allow-shortfall")
    assert info2["version"] == 2 and info2["triplets"] <= 4
    assert "clibench@1" in [r["ref"] for r in _run(capsys, "snapshot", "list")]
    assert _run(capsys, "snapshot", "verify", info["path"])["intact"] is True
    assert _run(capsys, "snapshot", "verify", "clibench@1")["path"] == info["path"]  # NAME@VERSION, as the README says
    main(["snapshot", "verify", "clibench"])  # the newest version, human output
    assert "intact" in capsys.readouterr().out

    coco = _run(capsys, "export", "coco", str(tmp / "coco"), "--snapshot", "clibench@1", "--images", "link")
    assert coco["annotations"] == n and coco["images_linked"] == coco["images"]
    assert coco["path"] == str((tmp / "coco" / "instances.json").resolve())
    # an earlier export is replaced as a whole (no stale images/ left beside the new JSON)
    again = _run(capsys, "export", "coco", str(tmp / "coco"), "--snapshot", "clibench@1")
    assert again["annotations"] == n and not (tmp / "coco" / "images").exists()
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".coco")) == []  # no staging left behind
    full = _run(capsys, "export", "coco", str(tmp / "coco-all"), "--domain", "Urban", "--since", "2026-01-01")
    assert 0 < full["annotations"] < n

    summary = _run(capsys, "evaluate", "--benchmark", "clibench@1", "--profile", "tiny", "--ablations",
                   "--out", str(tmp / "report"), "--judge", "tiny", "--judge-limit", "2")
    assert summary["samples"] == n and summary["meaningless"] is True
    assert set(summary["runs"]) == {"full", "no_refine", "no_route_a", "no_route_b"}
    md = Path(summary["markdown"]).read_text()
    for part in (TINY_MODEL_WARNING, "Table 3", "Pre-label quality", "MLLM judge", "per domain x level"):
        assert part in md
    assert (tmp / "report" / "plots" / "iou_hist.png").is_file()
    # resumable: the second evaluation is served from the per-model-version cache
    again = _run(capsys, "evaluate", "--benchmark", "clibench@1", "--out", str(tmp / "report"), "--no-quality")
    assert again["runs"]["full"]["cached"] == n

    rows = _run(capsys, "quality")
    assert rows[0]["model_version"] == "geoseg-test-v1" and rows[0]["n_annotations"] == len(
        read_benchmark(tmp / "bench"))


def test_cli_errors_are_one_clear_line(prefect_harness, geolabel_env, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--benchmark", "no-such-snapshot"])
    assert e.value.code == 1
    assert "no snapshot named 'no-such-snapshot'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "coco", "/tmp/x", "--level", "L9"])
    assert "unknown levels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["snapshot", "create", "s", "--domain-target", "Urban"])
    assert "NAME=NUMBER" in capsys.readouterr().err
