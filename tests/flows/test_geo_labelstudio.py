"""Chips in a REAL Label Studio: a scene tiled at ingest, pre-annotated (instant models: orchestration only), pushed;
each chip is a task like any image, whose data names its scene and pixel window and whose image Label Studio serves
(a PNG rendition of the chip)."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image as PILImage

from flows.ingest import ingest_flow
from flows.labeling_flows import push_flow
from flows.preannotate import preannotate_flow
from tests.data.geo.data import make_scene
from tests.fixtures.instant import register_instant

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_chip_tasks_show_scene_window_and_image(prefect_harness, labelstudio_server, monkeypatch):
    ls = labelstudio_server
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", ls.token)
    root = ls.imagery_root / "geo-chips"
    scene = make_scene(root / "imagery" / "scene.tif", 1300, 700, blocksize=256)
    q = root / "q.csv"
    q.write_text("image,query,level,domain\nscene.tif,the river,L1,Nature\n")
    ov = {"data_dir": str(root / "data"), "label_studio_url": ls.url, "imagery_roots": str(ls.imagery_root)}
    rep = ingest_flow(str(scene.parent), str(q), settings_overrides=ov, tile_size=1024, tile_overlap=128)
    assert rep.scenes == 1 and rep.items_new == 2  # 1300 x 700 in 1024 px chips: two chips, the edge one shifted
    profile = register_instant("instant-geo")
    pre = preannotate_flow(profile, settings_overrides=ov)
    assert pre.predicted == 2
    pushed = push_flow(profile, settings_overrides=ov, project_title="geo chips")
    assert pushed.pushed == 2 and not pushed.failed
    tasks = list(ls.client.iter_tasks(pushed.ls_project_id))
    assert sorted(t["data"]["scene"] for t in tasks) == [f"{scene} [0, 0, 1024, 700]", f"{scene} [276, 0, 1024, 700]"]
    for t in tasks:
        r = httpx.get(ls.url + t["data"]["image"], headers={"Authorization": f"Token {ls.token}"},
                      follow_redirects=True, timeout=30)
        assert r.status_code == 200, r.text[:200]
        assert PILImage.open(io.BytesIO(r.content)).size == (1024, 700)
