"""Pre-label quality per model version, and the COCO export + snapshot on both SQLite and PostgreSQL."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import sqlalchemy as sa

from geoseg.evaluation.bench import read_benchmark
from storage.datasets.coco import export_coco
from storage.datasets.quality import NO_PRELABEL, prelabel_quality
from storage.datasets.snapshot import create_snapshot, read_snapshot
from storage.models import Annotation, LabelTask, Verdict
from tests.fixtures.datasets import seed_from_bench
from tests.fixtures.evaluation import load_make_bench

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return read_benchmark(load_make_bench().make_bench(tmp_path_factory.mktemp("q") / "b", per_domain=5, size=32))


def test_quality_coco_and_snapshot_on_both_dialects(engine, session, blob_store, bench, tmp_path):
    seeded = seed_from_bench(session, blob_store, bench)
    session.commit()
    # expected figures straight from the seeding rule (sample i: pre-label = GT shifted by i % 3 px)
    verdicts, ious, lead, unchanged = [], [], [], 0
    for i, s in enumerate(bench.samples):
        v = "reject" if i % 11 == 5 else "no_target" if i % 7 == 3 else "accept"
        verdicts.append(v)
        lead.append(10.0 + i)
        if v == "accept":
            gt = s.load_mask()
            pre = np.roll(gt, i % 3, axis=1)
            ious.append(np.count_nonzero(gt & pre) / np.count_nonzero(gt | pre))
            unchanged += bool((pre == gt).all())  # a roll can leave a mask unchanged (a band along the roll)
    [q] = prelabel_quality(session)
    assert q.model_version == "geoseg-test-v1" and q.n_annotations == len(bench)
    assert q.acceptance_rate == pytest.approx(verdicts.count("accept") / len(bench))
    assert (q.n_no_target, q.n_rejected) == (seeded.n_no_target, seeded.n_rejected)
    assert q.mean_iou == pytest.approx(np.mean(ious)) and q.median_iou == pytest.approx(statistics.median(ious))
    assert q.share_unchanged == pytest.approx(unchanged / verdicts.count("accept"))
    assert q.median_lead_time_s == pytest.approx(statistics.median(lead))
    # without the stored IoU, it is computed from the mask blobs and agrees
    session.execute(sa.update(Annotation).values(iou_vs_prelabel=None))
    [q2] = prelabel_quality(session, blob_store)
    assert q2.mean_iou == pytest.approx(q.mean_iou) and q2.share_unchanged == pytest.approx(q.share_unchanged)
    # a task pushed without a pre-label is reported apart
    session.execute(sa.update(LabelTask).where(LabelTask.id == 1).values(prediction_id=None))
    rows = {r.model_version: r for r in prelabel_quality(session, blob_store)}
    assert rows[NO_PRELABEL].n_annotations == 1 and rows[NO_PRELABEL].share_unchanged is None
    assert prelabel_quality(session, model_version="nope") == []
    session.commit()

    # the same database feeds the COCO export and a snapshot
    res = export_coco(session, blob_store, tmp_path / "coco")
    data = json.loads(res.path.read_text())
    assert len(data["annotations"]) == len(seeded.triplet_masks) and len(data["no_target"]) == seeded.n_no_target
    info = create_snapshot(session, blob_store, "dialect", tmp_path / "snaps")
    session.commit()
    assert len(read_snapshot(info.path)) == len(seeded.triplet_masks)
    assert session.scalar(sa.select(sa.func.count()).select_from(Annotation)
                          .where(Annotation.verdict == Verdict.ACCEPT)) == len(seeded.triplet_masks)
