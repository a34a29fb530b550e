"""Scenes in: tiling plan, windowed reads from a local path, S3 (GDAL /vsis3 against moto_server) and a loopback
HTTP server with Range support, one rendition per scene, chips registered idempotently, bad scenes refused whole."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import rasterio
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from geoseg.imagery import read_image
from storage.db import create_all, make_engine, session_scope
from storage.models import Image
from storage.scenes import (
    ChipWindow,
    chip_transform,
    count_windows,
    plan_windows,
    register_scene,
)
from tests.data.geo.data import CUSTOM_WKT, break_epsg_key, corrupt_block, make_scene
from tests.fixtures.http_range import serve_directory


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(16, 1100), st.data())
def test_plan_covers_the_scene_with_full_size_chips(width, height, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    wins = plan_windows(width, height, tile, overlap)
    assert len(wins) == count_windows(width, height, tile, overlap)
    assert {(w.width, w.height) for w in wins} == {(min(tile, width), min(tile, height))}
    assert all(w.col >= 0 and w.row >= 0 and w.col + w.width <= width and w.row + w.height <= height for w in wins)
    cols = sorted({w.col for w in wins})
    assert cols[0] == 0 and cols[-1] + wins[0].width == width  # edges reached without padding
    assert all(b - a <= tile - overlap for a, b in zip(cols, cols[1:], strict=False))  # no gaps, >= overlap shared


def test_plan_small_scene_is_one_chip_and_bad_parameters_are_clear():
    assert plan_windows(300, 200, 1024, 128) == [ChipWindow(0, 0, 300, 200)]
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(100, 100, 64, 64)
    t = chip_transform((10.0, 0.0, 500_000.0, 0.0, -10.0, 4e6), ChipWindow(896, 1792, 1024, 1024))
    assert t == (10.0, 0.0, 508_960.0, 0.0, -10.0, 4e6 - 17_920.0)


def _engine(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    create_all(eng)
    return eng, functools.partial(session_scope, eng)


def _chips(eng):
    with session_scope(eng) as s:
        return s.scalars(sa.select(Image).order_by(Image.window_row, Image.window_col)).all()


def test_register_local_scene_one_rendition_idempotent(engine, blob_store, tmp_path):
    """Both dialects: chips registered with window, transform, WKT; overlaps render identically; re-run finds all."""
    src = make_scene(tmp_path / "scene.tif", 700, 500, crs=CUSTOM_WKT, transform=(5.0, 0, 10_000, 0, -5.0, 90_000),
                     blocksize=128)
    factory = functools.partial(session_scope, engine)
    reg = register_scene(factory, blob_store, str(src), "scene.tif", str(tmp_path), tile_size=256, overlap=32)
    assert reg.error is None and (reg.created, reg.known) == (len(reg.chips), 0) == (9, 0)
    again = register_scene(factory, blob_store, str(src), "scene.tif", str(tmp_path), tile_size=256, overlap=32)
    assert (again.created, again.known) == (0, 9) and again.chips == reg.chips
    with session_scope(engine) as s:
        rows = s.scalars(sa.select(Image).order_by(Image.window_row, Image.window_col)).all()
        assert len(rows) == 9
        a, b = rows[0], rows[1]
        assert (a.scene_uri, a.scene_width, a.scene_height, a.window_col, a.window_row) == (str(src), 700, 500, 0, 0)
        assert (b.window_col, b.width, b.height) == (224, 256, 256)
        with rasterio.open(src) as ds:
            assert a.crs == ds.crs.to_wkt()  # the WKT as read from the scene, never a guessed code
        assert CRS.from_wkt(a.crs) == CRS.from_wkt(CUSTOM_WKT) and CRS.from_wkt(a.crs).to_epsg() is None
        assert tuple(b.transform) == (5.0, 0.0, 10_000 + 224 * 5.0, 0.0, -5.0, 90_000.0)
        ra, rb = (read_image(blob_store.get(r.sha256)) for r in (a, b))
    assert ra.transform == tuple(a.transform) and ra.dtype == "uint8"
    # one rendition for the scene: the 32 px both chips share look the same in both (no per-chip stretch)
    np.testing.assert_array_equal(ra.rgb[:, 224:256], rb.rgb[:, 0:32])
    assert ra.rgb.std() > 10  # a real stretch, not a black chip


def test_scene_stats_from_overviews_match_the_whole_scene(tmp_path):
    from storage.scenes import open_scene, scene_info, scene_stretch

    src = make_scene(tmp_path / "ov.tif", 2600, 2300, overviews=(2, 4), blocksize=256)
    with open_scene(str(src)) as ds:
        info = scene_info(ds, str(src))
        lohi = scene_stretch(ds, info)
        full = ds.read(1).astype(np.float64)
    lo, hi = np.percentile(full, (2, 98))
    span = hi - lo
    assert abs(lohi[0][0] - lo) < 0.02 * span and abs(lohi[0][1] - hi) < 0.02 * span


def test_register_scene_from_s3_and_http(moto_server, s3_client, s3_bucket, blob_store, tmp_path, monkeypatch):
    from tests.fixtures.storage import MOTO_CREDENTIALS

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MOTO_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MOTO_CREDENTIALS["aws_secret_access_key"])
    src = make_scene(tmp_path / "cog" / "scene.tif", 600, 400, driver="COG", blocksize=256)
    s3_client.upload_file(str(src), s3_bucket, "scenes/scene.tif")
    eng, factory = _engine(tmp_path)
    uri = f"s3://{s3_bucket}/scenes/scene.tif"
    reg = register_scene(factory, blob_store, uri, "scene.tif", tile_size=256, overlap=0, s3_endpoint_url=moto_server)
    assert reg.error is None and len(reg.chips) == 6
    base, log, stop = serve_directory(src.parent)
    try:
        hreg = register_scene(factory, blob_store, f"{base}/scene.tif", "scene.tif", tile_size=256, overlap=0)
        gone = register_scene(factory, blob_store, f"{base}/missing.tif", "missing.tif", tile_size=256, overlap=0)
    finally:
        stop()
    assert hreg.error is None and len(hreg.chips) == 6
    ranged = [r for m, _, r in log if m == "GET" and r]
    assert ranged and all(m != "GET" or r for m, p, r in log if p.endswith("scene.tif"))  # read in ranges only
    assert gone.error and "missing.tif" in gone.error and not gone.chips
    chips = _chips(eng)
    assert len(chips) == 12  # the same pixels under another URI are other chips (the scene tag differs)
    s3_chip = next(c for c in chips if c.scene_uri == uri and c.window_col == 256)
    h_chip = next(c for c in chips if c.scene_uri.startswith("http") and c.window_col == 256)
    np.testing.assert_array_equal(read_image(blob_store.get(s3_chip.sha256)).rgb,
                                  read_image(blob_store.get(h_chip.sha256)).rgb)


def test_bad_scenes_are_refused_whole_and_clearly(blob_store, tmp_path):
    eng, factory = _engine(tmp_path)
    big = make_scene(tmp_path / "big.tif", 900, 900, blocksize=128)
    r = register_scene(factory, blob_store, str(big), "big.tif", tile_size=128, overlap=0, max_chips=20)
    assert "makes 64 chips, over the limit of 20" in r.error
    r = register_scene(factory, blob_store, str(big), "big.tif", tile_size=8192, overlap=0, max_pixels=10_000_000)
    assert "over the limit" in r.error and "GEOLABEL_MAX_PIXELS" in r.error
    bad = corrupt_block(make_scene(tmp_path / "corrupt.tif", 900, 900, blocksize=128), 5, 4)
    r = register_scene(factory, blob_store, str(bad), "corrupt.tif", tile_size=256, overlap=0)
    assert r.error and "corrupt.tif" in r.error and "\n" not in r.error and not r.chips
    crs = break_epsg_key(make_scene(tmp_path / "crs.tif", 300, 300, blocksize=64))
    r = register_scene(factory, blob_store, str(crs), "crs.tif", tile_size=128, overlap=0)
    assert "CRS cannot be parsed" in r.error
    r = register_scene(factory, blob_store, "http://127.0.0.1:9/nothing.tif", "nothing.tif", tile_size=128)
    assert r.error and "nothing.tif" in r.error
    assert _chips(eng) == []  # nothing half-registered
    ok = register_scene(factory, blob_store, str(big), "big.tif", tile_size=512, overlap=64)
    assert ok.error is None and len(_chips(eng)) == 4


def test_scene_without_crs_and_rotated_scene(blob_store, tmp_path):
    eng, factory = _engine(tmp_path)
    plain = make_scene(tmp_path / "plain.tif", 300, 200, crs=None, transform=None, blocksize=64)
    rot = make_scene(tmp_path / "rot.tif", 300, 200, transform=(8.66, -5.0, 500_000, -5.0, -8.66, 4_650_000),
                     blocksize=64)
    a = register_scene(factory, blob_store, str(plain), "plain.tif", tile_size=256, overlap=0)
    b = register_scene(factory, blob_store, str(rot), "rot.tif", tile_size=256, overlap=0)
    assert a.error is None and b.error is None and a.crs_wkt is None
    chips = {(c.scene_uri, c.window_col): c for c in _chips(eng)}
    p = chips[(str(plain), 44)]
    assert p.crs is None and tuple(p.transform) == (1.0, 0.0, 44.0, 0.0, 1.0, 0.0)  # pixel offsets only
    r = chips[(str(rot), 44)]
    with rasterio.open(rot) as ds:
        x, y = ds.transform @ (44, 0)
    assert tuple(r.transform)[:2] == (8.66, -5.0) and r.transform[2] == pytest.approx(x)
    assert r.transform[5] == pytest.approx(y)
    # the footprint filter works in the scene's CRS, rotation included
    assert b.chip_ids((x - 1, y - 1, x + 1, y + 1)) == [i for i, w in b.chips]  # both chips touch that corner
    far = b.chip_ids((0.0, 0.0, 1.0, 1.0))
    assert far == []


def test_render_lookup_table_matches_the_stretch_formula_and_nodata_is_black():
    from storage.scenes import render_chip

    rng = np.random.default_rng(1)
    for dtype in ("uint16", "int16"):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=(3, 40, 50), endpoint=True).astype(dtype)
        stretch = [(-1200.5, 3000.0), (10.0, 20000.0), (5.0, 5.0)]
        got = render_chip(a, stretch)
        for i, (lo, hi) in enumerate(stretch):
            want = (np.zeros(a[i].shape, np.uint8) if hi <= lo else
                    np.rint(np.clip((a[i].astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
            np.testing.assert_array_equal(got[i], want)
    masked = np.ma.masked_equal(np.stack([np.arange(12, dtype=np.uint16).reshape(3, 4)] * 3), 0)
    out = render_chip(masked, [(0.0, 11.0)] * 3)
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 2, 3].tolist() == [255, 255, 255]
