"""``geolabel calibrate`` through the CLI on a real SQLite database: a GENERATED benchmark seeded as accepted
annotations whose stored grounder boxes are the masks' tight boxes shifted by a known share; the written profile
must carry that shift as alpha (within the report's interval) and load as a new model version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from flows.cli import main
from geoseg.calibrate import tight_box
from geoseg.evaluation.bench import read_benchmark
from storage.datasets.snapshot import create_snapshot
from storage.maskcodec import decode_mask
from storage.models import Prediction, Triplet
from tests.fixtures.datasets import seed_from_bench
from tests.fixtures.evaluation import load_make_bench

SHIFT = 0.1


@pytest.fixture
def calib_env(tmp_path, monkeypatch, tiny_models_root):
    from flows.runtime import forget_runtimes, open_runtime
    from storage.settings import Settings

    for k in ("GEOLABEL_CONFIG", "GEOLABEL_DATABASE_URL", "GEOLABEL_BLOB_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GEOLABEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    bench = read_benchmark(load_make_bench().make_bench(tmp_path / "bench", per_domain=6, size=48))
    rt = open_runtime(Settings.load())
    with rt.session() as s:
        seed_from_bench(s, rt.blobs, bench)
        for t in s.scalars(sa.select(Triplet)):  # the grounder's box: the accepted mask's box, shifted right/down
            b = tight_box(decode_mask(rt.blobs.get(t.mask_sha256)))
            dx, dy = SHIFT * b.width, SHIFT * b.height
            box = [b.x1 + dx, b.y1 + dy, b.x2 + dx, b.y2 + dy]
            pred = s.scalars(sa.select(Prediction).where(Prediction.item_id == t.item_id)).one()
            pred.boxes, pred.box, pred.refined_box = [box], box, box
        s.flush()
        create_snapshot(s, rt.blobs, "calib", tmp_path / "data" / "snapshots")
    yield tmp_path
    forget_runtimes()


def test_calibrate_cli_recovers_the_shift_and_refuses_few_samples(calib_env, capsys):
    tmp = calib_env
    out = tmp / "profiles" / "tiny-calibrated.toml"
    main(["calibrate", "--snapshot", "calib", "--profile", "tiny", "--out", str(out), "--no-rerun", "--json",
          "--min-samples", "10"])  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    a = rep["fitted"]["alpha"]
    with capsys.disabled():
        print(f"CLI: alpha {a['value']} [{a['low']}, {a['high']}] (true shift {SHIFT}), n={a['n']}")
    assert a["low"] <= SHIFT + 1.5 / 48 and a["high"] >= SHIFT - 1.5 / 48  # up to pixel rounding of tiny masks
    assert rep["parameters"]["beta"] == 0.0 and any("gamma not fitted" in n for n in rep["notes"])
    from geoseg.profiles import load_profile

    cfg = load_profile(out)
    assert cfg.alpha == pytest.approx(a["value"], abs=1e-4) and rep["model_version"] == cfg.model_version
    assert Path(rep["report"]).is_file() and np.isfinite(rep["iou_held_out"]["before"]["all"])
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--snapshot", "calib", "--out", str(out), "--no-rerun", "--min-samples", "1000"])
    assert e.value.code == 1 and "at least 1000 accepted items" in capsys.readouterr().err
