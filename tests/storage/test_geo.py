"""Georeferenced outputs on real rasters: mask COGs, polygons (IoU >= 0.99 round trip), GeoJSON 4326, GeoPackage,
stitching; CRS edge cases (custom WKT, EPSG:4326, rotated, no CRS, datum-tag mismatch). Read back with rasterio and
pyogrio."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from storage.geo import (
    ChipMask,
    Feature,
    GeoRef,
    dissolved_polygons,
    iou,
    mask_polygons,
    rasterize_geometry,
    stitch_scene_mask,
    to_wgs84,
    write_geojson,
    write_gpkg,
    write_mask_geotiff,
)
from tests.data.geo.data import CUSTOM_WKT, UTM33, blob_mask, make_scene, ring_mask

CASES = {
    "utm": ("EPSG:32633", UTM33),
    "custom_wkt": (CUSTOM_WKT, (5.0, 0.0, 10_000.0, 0.0, -5.0, 90_000.0)),
    "epsg4326": ("EPSG:4326", (1e-4, 0.0, 12.3, 0.0, -1e-4, 42.1)),
    "rotated": ("EPSG:32633", (8.66, -5.0, 500_000.0, -5.0, -8.66, 4_650_000.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mask_geotiff_polygons_and_geojson_round_trip(tmp_path, case):
    crs, t = CASES[case]
    src = make_scene(tmp_path / "src.tif", 200, 160, crs=crs, transform=t, blocksize=64)
    with rasterio.open(src) as ds:
        georef = GeoRef(ds.crs.to_wkt(), tuple(tuple(ds.transform)[:6]), ds.width, ds.height)
    mask = blob_mask(160, 200, seed=3)
    mask[0:40, 0:60] = ring_mask(100, 100)[10:50, 0:60]  # a known hole near the corner
    out = write_mask_geotiff(mask, georef, tmp_path / "x.mask.tif")
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (ds.width, ds.height, ds.dtypes[0]) == (200, 160, "uint8")
        assert ds.crs == CRS.from_wkt(georef.crs_wkt)
        assert ds.transform.almost_equals(georef.affine)
        np.testing.assert_array_equal(ds.read(1), mask.astype(np.uint8))
        if case == "custom_wkt":
            assert ds.crs.to_epsg() is None  # no code was invented on the way

    poly = mask_polygons(mask, georef)
    assert poly.is_valid and poly.geom_type == "MultiPolygon" and len(poly.geoms) > 1
    assert any(len(p.interiors) for p in poly.geoms)  # holes kept
    assert iou(rasterize_geometry(poly, georef), mask) >= 0.99

    # the geometry is where the pixels are: a pixel centre inside the mask maps to a point inside the polygon
    rr, cc = np.nonzero(mask)
    x, y = georef.affine @ (cc[::97] + 0.5, rr[::97] + 0.5)
    assert all(poly.contains(shapely.Point(a, b)) for a, b in zip(x, y, strict=True))

    path = write_geojson([Feature(poly, georef.crs_wkt, {"query": "the pond", "model_version": "mv1"})],
                         tmp_path / "x.geojson")
    doc = json.loads(path.read_text())
    assert "crs" not in doc  # RFC 7946: always WGS 84 lon/lat, no crs member
    feat = doc["features"][0]
    assert feat["properties"] == {"query": "the pond", "model_version": "mv1"}
    g = shapely.geometry.shape(feat["geometry"])
    lon, lat = warp_transform(CRS.from_wkt(georef.crs_wkt), "EPSG:4326", list(x[:5]), list(y[:5]))
    assert all(-180 <= a <= 180 and -90 <= b <= 90 for a, b in zip(lon, lat, strict=True))
    assert all(g.buffer(1e-7).contains(shapely.Point(a, b)) for a, b in zip(lon, lat, strict=True))  # lon, lat order
    info = pyogrio.read_info(path)
    assert info["features"] == 1 and CRS.from_user_input(info["crs"]) == CRS.from_epsg(4326)


def test_no_crs_is_pixel_space_only(tmp_path):
    src = make_scene(tmp_path / "plain.tif", 120, 100, crs=None, transform=None, blocksize=16)
    with rasterio.open(src) as ds:
        assert ds.crs is None
        georef = GeoRef(None, tuple(tuple(ds.transform)[:6]), ds.width, ds.height)
    mask = ring_mask(100, 120)
    write_mask_geotiff(mask, georef, tmp_path / "m.mask.tif")
    with rasterio.open(tmp_path / "m.mask.tif") as ds:
        assert ds.crs is None
    poly = mask_polygons(mask, georef)
    assert shapely.box(10, 10, 60, 60).difference(shapely.box(25, 25, 45, 45)).equals(poly.geoms[0]) or any(
        p.equals(shapely.box(10, 10, 60, 60).difference(shapely.box(25, 25, 45, 45))) for p in poly.geoms)
    with pytest.raises(ValueError, match="no CRS"):
        to_wgs84(poly, None)
    out = write_geojson([Feature(poly, None, {"query": "q"})], tmp_path / "none.geojson")
    assert json.loads(out.read_text())["features"] == []  # pixel-only: nothing can be placed on Earth
    assert write_gpkg(tmp_path / "none.gpkg", "polygons", [Feature(poly, None, {"triplet_id": 1})]) == []


def test_datum_tag_mismatch_keeps_each_tag_and_separates_layers(tmp_path):
    """Same grid tagged WGS 84 / UTM 33N (32633) and ETRS89 / UTM 33N (25833): neither is relabelled; the
    GeoPackage holds two layers (a layer has one CRS); the same code spelt as WKT shares the first layer."""
    mask = ring_mask(100, 100)
    feats = []
    for i, crs in enumerate(["EPSG:32633", "EPSG:25833", CRS.from_epsg(32633).to_wkt()], start=1):
        src = make_scene(tmp_path / f"s{i}.tif", 100, 100, crs=crs, transform=UTM33, blocksize=16)
        with rasterio.open(src) as ds:
            georef = GeoRef(ds.crs.to_wkt(), tuple(tuple(ds.transform)[:6]), 100, 100)
        feats.append(Feature(mask_polygons(mask, georef), georef.crs_wkt, {"triplet_id": i, "query": f"q{i}"}))
    layers = write_gpkg(tmp_path / "out.gpkg", "polygons", feats)
    assert layers == ["polygons", "polygons_2"]
    assert dict(pyogrio.list_layers(tmp_path / "out.gpkg")) == {"polygons": "MultiPolygon",
                                                                 "polygons_2": "MultiPolygon"}
    assert CRS.from_user_input(pyogrio.read_info(tmp_path / "out.gpkg", layer="polygons")["crs"]).to_epsg() == 32633
    assert CRS.from_user_input(pyogrio.read_info(tmp_path / "out.gpkg", layer="polygons_2")["crs"]).to_epsg() == 25833
    meta, _, geoms, fields = pyogrio.raw.read(tmp_path / "out.gpkg", layer="polygons")
    assert list(fields[0]) == [1, 3]
    assert shapely.from_wkb(geoms[0]).equals(feats[0].geometry)
    # in EPSG:4326 the two tags land within a metre of each other (ETRS89 ~ WGS 84 at this precision)
    a, b = to_wgs84(feats[0].geometry, feats[0].crs_wkt), to_wgs84(feats[1].geometry, feats[1].crs_wkt)
    assert a.hausdorff_distance(b) < 1e-5


def test_stitch_union_of_chip_masks_and_dissolve(tmp_path):
    W, H, tile, overlap = 700, 500, 256, 64
    from storage.scenes import plan_windows

    truth = blob_mask(H, W, seed=5, sigma=9.0)
    georef = GeoRef(CRS.from_epsg(32633).to_wkt(), UTM33, W, H)
    wins = plan_windows(W, H, tile, overlap)
    assert all(w.width == tile and w.height == tile for w in wins)  # shifted inside: full-size, no padding
    chips = []
    for k, w in enumerate(wins):
        m = truth[w.row:w.row + w.height, w.col:w.col + w.width].copy()
        if k % 2:  # odd chips miss their left half: the union with the neighbours' overlap restores some of it
            m[:, : w.width // 2] = False
        chips.append(ChipMask(w.col, w.row, w.width, w.height, load=lambda m=m: m))
    expect = np.zeros((H, W), dtype=bool)
    for c in chips:
        expect[c.row:c.row + c.height, c.col:c.col + c.width] |= c.load()
    out = stitch_scene_mask(chips, georef, tmp_path / "scene.mask.tif", strip=512)
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.crs.to_epsg() == 32633 and ds.transform.almost_equals(georef.affine)
        np.testing.assert_array_equal(ds.read(1).astype(bool), expect)
    poly = dissolved_polygons(out, georef)
    assert iou(rasterize_geometry(poly, georef), expect) >= 0.99
    # dissolved: no two parts overlap (one trace of the union, not one polygon per chip)
    parts = list(poly.geoms)
    assert sum(p.area for p in parts) == pytest.approx(shapely.union_all(parts).area, rel=1e-9)


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 10_000), st.floats(0.2, 0.8), st.sampled_from(["utm", "epsg4326", "rotated"]))
def test_simplified_polygons_rasterise_back_to_the_mask_exactly(seed, density, case):
    """The tolerance argument of storage.geo on the worst case: salt-and-pepper masks full of 1 px parts, holes and
    diagonal contacts -- valid geometry and the exact mask back (IoU 1.0 >= 0.99)."""
    crs, t = CASES[case]
    rng = np.random.default_rng(seed)
    mask = rng.random((48, 40)) < density
    georef = GeoRef(CRS.from_user_input(crs).to_wkt(), t, 40, 48)
    poly = mask_polygons(mask, georef)
    assert poly.is_valid
    np.testing.assert_array_equal(rasterize_geometry(poly, georef), mask)


@settings(deadline=None, max_examples=25)
@given(st.integers(0, 10_000), st.floats(2.0, 8.0))
def test_smooth_masks_simplified_stay_valid_and_exact(seed, sigma):
    mask = blob_mask(96, 80, seed=seed, sigma=sigma)
    georef = GeoRef(CRS.from_epsg(32633).to_wkt(), UTM33, 80, 96)
    poly = mask_polygons(mask, georef)
    assert poly.is_valid
    np.testing.assert_array_equal(rasterize_geometry(poly, georef), mask)
