"""The Done-when path with the real flows (Prefect test harness), a real Label Studio and the tiny models:

images ingested without queries -> ``intake_flow`` makes intake tasks -> an annotator writes a query on one (through
Label Studio's API, as the UI's submit does) -> ``intake_flow`` + ``label_cycle_flow`` -> a review task with the GeoSeg
prediction (model_version) -> the annotator accepts a mask -> the next cycle's sync puts the triplet in the store.
Tiny-model masks are meaningless; the accepted mask here is the annotator's own brush stroke.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


def test_query_written_in_label_studio_reaches_review_and_triplet(
    prefect_harness, labelstudio_server, tiny_models_root, monkeypatch, capsys
):
    from flows.cycle import label_cycle_flow
    from flows.ingest import register_images
    from flows.intake import intake_flow
    from flows.runtime import open_runtime, settings_from
    from labeling.brush import mask_to_rle
    from labeling.intake import intake_result
    from storage.models import Item, Prediction, Triplet
    from storage.sources import list_images

    ls = labelstudio_server
    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", ls.token)
    tag = uuid.uuid4().hex[:6]
    data_dir = ls.imagery_root / f"intake-cycle-{tag}"
    src = data_dir / "src"
    src.mkdir(parents=True)
    for name in ("SOAP_031.png", "SOAP_061.png"):
        shutil.copy(AERIAL / name, src / name)
    overrides = {"data_dir": str(data_dir), "label_studio_url": ls.url, "imagery_roots": [str(ls.imagery_root)]}
    rt = open_runtime(settings_from(overrides))
    regs = register_images(rt, list_images(str(src)), source=str(src))
    assert [r.error for r in regs] == [None, None]

    intake_title, review_title = f"intake {tag}", f"review {tag}"
    first = intake_flow(overrides, intake_title)
    assert (first.tasks_created, first.items_new) == (2, 0)
    tasks = sorted(ls.client.iter_tasks(first.ls_project_id), key=lambda t: t["id"])
    import httpx

    img = httpx.get(ls.url + tasks[0]["data"]["image"], headers={"Authorization": f"Token {ls.token}"})
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"  # the image the annotator will see

    # the annotator writes a query on the first image
    ls.client.create_annotation(tasks[0]["id"], intake_result(["the dark pond"], "L1", "Nature"), lead_time=9.0)
    # one label cycle with intake on: the query becomes an item, is pre-annotated and pushed for review
    cyc = label_cycle_flow(
        profile="tiny", settings_overrides=overrides, project_title=review_title, intake=True, intake_title=intake_title
    )
    assert cyc.preannotate.predicted == 1 and cyc.push.pushed == 1
    (review,) = list(ls.client.iter_tasks(cyc.push.ls_project_id, fields="all"))
    assert review["data"]["query"] == "the dark pond"
    assert [p["model_version"] for p in review["predictions"]] == [cyc.preannotate.model_version]

    # the annotator corrects the mask and accepts; the next cycle syncs it into the triplet store
    h, w = 400, 400
    mask = np.zeros((h, w), dtype=bool)
    mask[120:220, 80:200] = True
    result = [
        {"from_name": "mask", "to_name": "image", "type": "brushlabels", "original_width": w, "original_height": h,
         "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["target"]}},
        {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["accept"]}},
    ]
    ls.client.create_annotation(review["id"], result, lead_time=30.0)
    again = intake_flow(overrides, intake_title)
    assert again.items_new == 0  # idempotent
    cyc2 = label_cycle_flow(profile="tiny", settings_overrides=overrides, project_title=review_title)
    assert cyc2.preannotate.predicted == 0 and cyc2.push.pushed == 0 and cyc2.sync.upserted == 1
    with rt.session() as s:
        (trip,) = s.scalars(sa.select(Triplet)).all()
        assert (trip.query, trip.level, trip.domain, trip.withdrawn) == ("the dark pond", "L1", "Nature", False)
        assert s.execute(sa.select(sa.func.count()).select_from(Item)).scalar_one() == 1
        assert s.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar_one() == 1

    # the CLI on the same settings (env + --data-dir): `geolabel intake pull --json`
    import json

    from flows.cli import main

    monkeypatch.setenv("GEOLABEL_LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("GEOLABEL_IMAGERY_ROOTS", str(ls.imagery_root))
    capsys.readouterr()
    main(["intake", "pull", "--intake-title", intake_title, "--data-dir", str(data_dir), "--json"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert (report["queries"], report["items_new"], report["tasks_created"]) == (1, 0, 0)
    assert ls.token not in out
