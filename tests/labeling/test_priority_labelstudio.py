"""The label stream's order with a REAL Label Studio: a SIMULATED annotator (the test's API user, annotating with
the test's own masks) asks ``/api/projects/{id}/next`` for each task. The expected order is worked out here from the
rule (under-filled strata first, then the least certain pre-label), independently of labeling.priority."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image as PILImage

from labeling.priority import configure_label_stream
from labeling.push import ImageUrlResolver, push_predictions
from labeling.sync import sync_annotations
from storage.maskcodec import encode_mask
from storage.records import ImageRecord, ItemRecord, PredictionRecord
from tests.fixtures.storage import add_image, add_item, add_prediction
from tests.helpers.simulated_annotators import result

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
MV = "geoseg-priority-test-v1"
H, W = 32, 40
#: (domain, level, pre-label score): two strata, scores chosen so that quota and certainty disagree
ITEMS = [("Urban", "L1", 0.9), ("Urban", "L1", 0.2), ("Urban", "L1", 0.6),
         ("Nature", "L3", 0.5), ("Nature", "L3", 0.1), ("Nature", "L3", 0.8)]  # fmt: skip
TARGETS = {("Urban", "L1"): 1, ("Nature", "L3"): 5}


def expected_order() -> list[int]:
    """Serve the lowest (stratum full, score) each time; a served item is accepted and fills its stratum."""
    left, fill, order = list(range(len(ITEMS))), {}, []
    while left:
        def key(i):
            cell = ITEMS[i][:2]
            return (fill.get(cell, 0) >= TARGETS[cell], ITEMS[i][2])

        nxt = min(left, key=key)
        order.append(nxt)
        left.remove(nxt)
        fill[ITEMS[nxt][:2]] = fill.get(ITEMS[nxt][:2], 0) + 1
    return order


def test_simulated_annotator_gets_under_filled_strata_and_uncertain_tasks_first(ls_project):
    p, client, s = ls_project, ls_project.ls.client, ls_project.session
    rng = np.random.default_rng(3)
    mask = np.zeros((H, W), bool)
    mask[8:20, 10:30] = True
    ids = []
    for k, (domain, level, score) in enumerate(ITEMS):
        path = p.ls.imagery_root / f"priority_{k}.png"
        PILImage.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
        img = add_image(s, ImageRecord(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), uri=str(path),
                                               width=W, height=H))  # fmt: skip
        it = add_item(s, ItemRecord(image_id=img, query=f"target {k}", level=level, domain=domain))
        add_prediction(s, PredictionRecord(item_id=it, model_version=MV, score=score, route="text",
                                                   mask_sha256=p.blobs.put(encode_mask(mask)), mask_area=240))
        ids.append(it)
    s.commit()
    push_predictions(client, s, p.blobs, p.handle, MV, image_url=ImageUrlResolver.for_server(p.ls.server))
    configure_label_stream(client, s, p.handle, MV, targets=TARGETS)
    project = client.get_project(p.handle.ls_project_id)
    assert project["sampling"] == "Uncertainty sampling" and project["model_version"] == MV

    served = []
    for _ in ITEMS:
        task = client.request("GET", f"/api/projects/{p.handle.ls_project_id}/next")
        served.append(ids.index(task["data"]["item_id"]))
        client.create_annotation(task["id"], result("accept", mask), lead_time=1.0)
        sync_annotations(client, s, p.blobs, p.handle, queue_targets=TARGETS)
    print("served (item index):", served, "expected:", expected_order())
    assert served == expected_order()
    by_certainty = sorted(range(len(ITEMS)), key=lambda i: ITEMS[i][2])
    assert served != by_certainty  # the quota changed the order (Urban L1 filled after one accept)
