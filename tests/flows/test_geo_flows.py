"""Issue 16 end to end: tiled ingest (scene -> chips, query rows -> every chip / a bbox's chips, idempotent, a bad
scene reported while the batch goes on), ``geolabel predict`` georeferenced outputs, ``geolabel export geo``.
Masks from the tiny models are meaningless; the checks are on files, CRSs, transforms and round trips."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import sqlalchemy as sa
from rasterio.crs import CRS

from flows.cli import main
from flows.ingest import ingest_flow
from flows.runtime import open_runtime, settings_from
from storage.geo import GeoRef, iou, rasterize_geometry
from storage.maskcodec import encode_mask
from storage.models import Annotation, Image, Item, ItemStatus, LabelProject, LabelTask, Triplet, Verdict
from tests.data.geo.data import UTM33, blob_mask, corrupt_block, make_scene
from tests.fixtures.models import AERIAL


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_predict_writes_mask_geotiff_and_geojson(monkeypatch, tiny_models_root, tmp_path, capsys):
    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    out = tmp_path / "pred"
    src = AERIAL / "OSBS_029.tif"  # EPSG:32617, Florida
    assert run(["predict", str(src), "the largest tree crown", "--out", str(out)]) == 0, capsys.readouterr().err
    cap = capsys.readouterr()
    stem = "OSBS_029__the-largest-tree-crown"
    png = np.asarray(__import__("PIL.Image").Image.open(out / f"{stem}.mask.png")) > 0
    with rasterio.open(src) as s, rasterio.open(out / f"{stem}.mask.tif") as m:
        assert m.crs == s.crs and m.transform == s.transform and (m.width, m.height) == (s.width, s.height)
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and m.dtypes[0] == "uint8"
        np.testing.assert_array_equal(m.read(1) > 0, png)
        georef = GeoRef(s.crs.to_wkt(), tuple(tuple(s.transform)[:6]), s.width, s.height)
    doc = json.loads((out / f"{stem}.geojson").read_text())
    props = doc["features"][0]["properties"]
    data = json.loads((out / f"{stem}.json").read_text())
    assert props == {"query": "the largest tree crown", "model_version": data["model_version"]}
    assert f"geojson: {out / (stem + '.geojson')}" in cap.out
    geom = doc["features"][0]["geometry"]
    if png.any():  # tiny-model masks are meaningless, but wherever they are, they are in Florida, in lon/lat
        lon, lat = shapely.geometry.shape(geom).centroid.coords[0]
        assert -83 < lon < -81 and 29 < lat < 30.5
        # back in the source CRS the polygons rasterise to the mask
        from rasterio.warp import transform_geom

        back = shapely.geometry.shape(transform_geom("EPSG:4326", s.crs, geom))
        assert iou(rasterize_geometry(back, georef), png) >= 0.98  # two reprojections: float noise at edges


def _accept_all(rt, masks_by_image) -> list[int]:
    """Seed what the labeling loop would write: a task, an accepting annotation and a triplet per item."""
    ids = []
    with rt.session() as s:
        proj = LabelProject(label_studio_url="http://127.0.0.1:8080", ls_project_id=7, title="geo")
        s.add(proj)
        s.flush()
        items = s.execute(sa.select(Item, Image).join(Image).order_by(Item.id)).all()
        for n, (item, img) in enumerate(items):
            mask = masks_by_image(img)
            task = LabelTask(label_project_id=proj.id, item_id=item.id, ls_task_id=100 + n)
            s.add(task)
            s.flush()
            sha = rt.blobs.put(encode_mask(mask))
            ann = Annotation(ls_annotation_id=900 + n, label_task_id=task.id, item_id=item.id, verdict=Verdict.ACCEPT,
                             mask_sha256=sha, mask_area=int(mask.sum()), annotator="ann@example.org",
                             created_at=img.created_at, updated_at=img.created_at)
            s.add(ann)
            s.flush()
            item.status = ItemStatus.ACCEPTED
            t = Triplet(annotation_id=ann.id, item_id=item.id, image_id=img.id, query=item.query, mask_sha256=sha,
                        domain=item.domain, level=item.level)
            s.add(t)
            s.flush()
            ids.append(t.id)
    return ids


@pytest.mark.slow
def test_tiled_ingest_and_export_geo(prefect_harness, tmp_path, monkeypatch, capsys):
    src = tmp_path / "imagery"
    scene = make_scene(src / "scene.tif", 1500, 1100, blocksize=256, overviews=(2, 4))
    bad = corrupt_block(make_scene(src / "broken.tif", 1300, 1300, blocksize=256), 2, 3)
    (src / "small.tif").write_bytes((AERIAL / "OSBS_029.tif").read_bytes())
    # bbox in the scene CRS around the scene's lower-right corner: only the chips there
    x1, y0 = UTM33[2] + 1500 * 10, UTM33[5] - 1100 * 10
    q = tmp_path / "q.csv"
    q.write_text("image,query,level,domain,bbox\n"
                 "scene.tif,the river,L1,Nature,\n"
                 f"scene.tif,the corner field,L2,Rural,\"{x1 - 500},{y0},{x1},{y0 + 500}\"\n"
                 "broken.tif,a road,L1,Traffic,\n"
                 "small.tif,the tree,L1,Nature,\n")
    ov = {"data_dir": str(tmp_path / "data")}
    rep = ingest_flow(str(src), str(q), settings_overrides=ov, tile_size=1024, tile_overlap=128)
    # scene 1500x1100 in 1024 px chips, edges shifted inside: 2 x 2 chips; the small image is whole
    assert rep.scenes == 1 and rep.images_new == 5 and rep.items_new == 4 + 1 + 1
    assert [i.ref for i in rep.issues if i.kind == "image"] == [str(bad)]
    assert any(i.line == 4 and "broken.tif" in i.message for i in rep.issues)
    assert any("corrupt block or truncated file" in i.message for i in rep.issues if i.kind == "image")
    again = ingest_flow(str(src), str(q), settings_overrides=ov, tile_size=1024, tile_overlap=128)
    assert (again.images_new, again.images_known, again.items_new, again.items_known) == (0, 5, 0, 6)
    rt = open_runtime(settings_from(ov))
    with rt.session() as s:
        chips = s.scalars(sa.select(Image).where(Image.scene_uri == str(scene)).order_by(Image.id)).all()
        assert sorted((c.window_col, c.window_row, c.width, c.height) for c in chips) == [
            (0, 0, 1024, 1024), (0, 76, 1024, 1024), (476, 0, 1024, 1024), (476, 76, 1024, 1024)]
        corner = s.scalars(sa.select(Image.window_col).join(Item).where(Item.query == "the corner field")).all()
        assert corner == [476]  # only the chip(s) intersecting the bbox ... the lower-right one
        assert s.scalar(sa.select(sa.func.count()).select_from(Image).where(Image.uri.like(f"{bad}%"))) == 0

    truth = blob_mask(1100, 1500, seed=2, sigma=12.0)

    def mask_for(img):
        if img.scene_uri is None:
            return blob_mask(img.height, img.width, seed=9)
        return truth[img.window_row:img.window_row + img.height, img.window_col:img.window_col + img.width].copy()

    tids = _accept_all(rt, mask_for)
    monkeypatch.setenv("GEOLABEL_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "geo"
    assert run(["export", "geo", str(out), "--level", "L1"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "export_geo.json").read_text())
    assert summary["triplets"] == 5 and summary["masks"] == 5 and summary["skipped"] == []
    assert len(list((out / "masks").glob("*.mask.tif"))) == 5
    layers = dict(pyogrio.list_layers(out / "polygons.gpkg"))
    assert set(layers) == {"triplets", "triplets_2", "scenes"}  # EPSG:32633 scene chips, the EPSG:32617 image
    meta, _, geoms, fields = pyogrio.raw.read(out / "polygons.gpkg", layer="triplets")
    assert meta["fields"].tolist() == ["triplet_id", "query", "level", "domain", "verdict", "annotator",
                                       "model_version", "scene", "chip_window", "image_sha256"]
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 32633
    assert set(fields[7]) == {str(scene)} and set(fields[4]) == {"accept"}
    assert sorted(fields[8]) == ["0,0,1024,1024", "0,76,1024,1024", "476,0,1024,1024", "476,76,1024,1024"]
    # the stitched scene mask is the union of the chip masks = the truth over the covered scene
    (scene_mask,) = list((out / "scenes").glob("*.mask.tif"))
    with rasterio.open(scene) as s, rasterio.open(scene_mask) as m:
        assert m.crs == s.crs and m.transform.almost_equals(s.transform) and (m.width, m.height) == (1500, 1100)
        np.testing.assert_array_equal(m.read(1) > 0, truth)
    meta, _, geoms, fields = pyogrio.raw.read(out / "polygons.gpkg", layer="scenes")
    g = shapely.from_wkb(geoms[0])
    georef = GeoRef(CRS.from_epsg(32633).to_wkt(), UTM33, 1500, 1100)
    assert iou(rasterize_geometry(g, georef), truth) >= 0.99
    doc = json.loads((out / "polygons.geojson").read_text())
    l1 = [t for t in tids if t != tids[-2]]  # the L2 "corner field" triplet (one chip) is filtered out
    assert len(doc["features"]) == 5 and {f["properties"]["triplet_id"] for f in doc["features"]} == set(l1)
    lon, lat = shapely.geometry.shape(doc["features"][0]["geometry"]).centroid.coords[0]
    assert 14 < lon < 16 and 41 < lat < 43  # UTM 33N scene near 15 E, 42 N: lon first
    # COCO keeps working on chips, and its images carry scene + window
    assert run(["export", "coco", str(tmp_path / "coco")]) == 0, capsys.readouterr().err
    coco = json.loads((tmp_path / "coco" / "instances.json").read_text())
    wins = sorted(tuple(i["window"]) for i in coco["images"] if i.get("scene") == str(scene))
    assert wins == [(0, 0, 1024, 1024), (0, 76, 1024, 1024), (476, 0, 1024, 1024), (476, 76, 1024, 1024)]
    assert len(coco["annotations"]) == 6
