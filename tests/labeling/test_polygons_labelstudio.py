"""Polygon pre-labels (labeling.polygons) through the real Label Studio: pushed as PolygonLabels regions, edited by
an annotator (a vertex moved, through the API the UI uses) and synced back to a mask. Masks are synthetic discs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from labeling.polygons import polygon_region_to_mask
from labeling.push import ImageUrlResolver, push_predictions
from labeling.sync import sync_annotations
from storage.maskcodec import decode_mask, encode_mask
from storage.models import Annotation
from storage.records import ImageRecord, ItemRecord, PredictionRecord
from tests.fixtures.storage import add_image, add_item, add_prediction

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
MV = "geoseg-polygon-test"


def test_polygon_prelabel_push_edit_and_sync(ls_project):
    p = ls_project
    h, w = 60, 80
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - 30) ** 2 + (xx - 40) ** 2 < 18**2
    path = p.ls.imagery_root / f"poly_{p.handle.ls_project_id}.png"
    PILImage.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    image_id = add_image(p.session, ImageRecord(sha256="b" * 63 + str(p.handle.ls_project_id % 10),
                                                        uri=str(path), width=w, height=h))
    item_id = add_item(p.session, ItemRecord(image_id=image_id, query="the round pond", level="L1"))
    add_prediction(p.session, PredictionRecord(item_id=item_id, model_version=MV,
                                                       mask_sha256=p.blobs.put(encode_mask(mask)), score=0.5))
    p.session.commit()
    rep = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV,
                           image_url=ImageUrlResolver.for_server(p.ls.server), region_format="polygon")
    assert rep.pushed == 1 and not rep.failed
    (task,) = p.ls.client.iter_tasks(p.handle.ls_project_id, fields="all")
    (pred,) = task["predictions"]
    (region,) = pred["result"]
    assert region["type"] == "polygonlabels" and region["from_name"] == "polygon" and pred["model_version"] == MV
    shown = polygon_region_to_mask(region["value"]["points"], h, w)
    assert np.count_nonzero(shown & mask) / np.count_nonzero(shown | mask) > 0.9  # 1 px tolerance on an 18 px disc

    # the annotator drags the leftmost vertex 10 px further left and accepts
    pts = [list(pt) for pt in region["value"]["points"]]
    i = min(range(len(pts)), key=lambda k: pts[k][0])
    pts[i][0] -= 100.0 * 10 / w
    edited = {**region, "value": {**region["value"], "points": pts}}
    verdict = {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["accept"]}}
    p.ls.client.create_annotation(task["id"], [edited, verdict])
    srep = sync_annotations(p.ls.client, p.session, p.blobs, p.handle, full=True)
    assert srep.upserted == 1 and not srep.malformed, srep
    (ann,) = p.session.query(Annotation).all()
    got = decode_mask(p.blobs.get(ann.mask_sha256), shape=(h, w))
    np.testing.assert_array_equal(got, polygon_region_to_mask(pts, h, w))  # exactly the edited polygon
    assert got.sum() > shown.sum()  # the moved vertex added area
